#include "engine/common/log.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

namespace shale::log {

namespace {
bool NeedsQuotes(std::string_view v) {
  if (v.empty()) return true;
  for (char c : v) {
    if (c == ' ' || c == '"' || c == '=' || c == '\n' || c == '\t') return true;
  }
  return false;
}
void AppendValue(std::string& out, std::string_view v) {
  if (!NeedsQuotes(v)) {
    out += v;
    return;
  }
  out += '"';
  for (char c : v) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  out += '"';
}
}  // namespace

std::string Format(std::string_view msg, std::initializer_list<Field> fields) {
  std::string out = "msg=";
  AppendValue(out, msg);
  for (const Field& f : fields) {
    out += ' ';
    out += f.key;
    out += '=';
    AppendValue(out, f.value);
  }
  return out;
}

void Init(std::string_view level, std::string_view file) {
  std::shared_ptr<spdlog::logger> logger;
  if (file.empty()) {
    logger = spdlog::stderr_logger_mt("shale");
  } else {
    logger = spdlog::basic_logger_mt("shale", std::string(file));
  }
  logger->set_pattern("ts=%Y-%m-%dT%H:%M:%S.%fZ level=%l thread=%t %v",
                      spdlog::pattern_time_type::utc);
  logger->set_level(spdlog::level::from_str(std::string(level)));
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

}  // namespace shale::log
