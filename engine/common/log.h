// Structured logging on spdlog: every line is "ts level msg key=value ...", so logs can be
// grepped by field. Use the SHALE_LOG_* macros; fields are passed as {"key", value} pairs.
#pragma once

#include <spdlog/spdlog.h>

#include <initializer_list>
#include <string>
#include <string_view>

namespace shale::log {

struct Field {
  Field(std::string_view k, std::string_view v) : key(k), value(v) {}
  Field(std::string_view k, const char* v) : key(k), value(v) {}
  Field(std::string_view k, const std::string& v) : key(k), value(v) {}
  template <typename T, typename = std::enable_if_t<std::is_arithmetic_v<T>>>
  Field(std::string_view k, T v) : key(k), value(std::to_string(v)) {}
  std::string key;
  std::string value;
};

// Formats msg and fields as: msg="..." k1=v1 k2="v 2".
std::string Format(std::string_view msg, std::initializer_list<Field> fields);

// Sets up the default logger: level name ("debug", "info", "warn", "error"), optional file.
void Init(std::string_view level, std::string_view file = {});

}  // namespace shale::log

#define SHALE_LOG_DEBUG(msg, ...) spdlog::debug("{}", ::shale::log::Format(msg, {__VA_ARGS__}))
#define SHALE_LOG_INFO(msg, ...) spdlog::info("{}", ::shale::log::Format(msg, {__VA_ARGS__}))
#define SHALE_LOG_WARN(msg, ...) spdlog::warn("{}", ::shale::log::Format(msg, {__VA_ARGS__}))
#define SHALE_LOG_ERROR(msg, ...) spdlog::error("{}", ::shale::log::Format(msg, {__VA_ARGS__}))
