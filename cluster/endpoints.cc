#include "cluster/endpoints.h"

#include <algorithm>
#include <cctype>
#include <charconv>

namespace shale::cluster {
namespace {

constexpr std::string_view kScheme = "etcd://";
constexpr size_t kMaxHostLength = 253;  // a DNS name

Status Bad(std::string_view text, const std::string& why) {
  return Status::InvalidArgument("cluster store '" + std::string(text) + "': " + why +
                                 " (expected etcd://HOST:PORT[,HOST:PORT...])");
}

bool ValidHostName(std::string_view host) {
  if (host.empty() || host.size() > kMaxHostLength) return false;
  if (host.front() == '-' || host.front() == '.' || host.back() == '-') return false;
  return std::all_of(host.begin(), host.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_';
  });
}

bool ValidIpv6(std::string_view host) {
  if (host.size() < 2 || host.size() > 45) return false;
  return std::all_of(host.begin(), host.end(), [](char c) {
    return std::isxdigit(static_cast<unsigned char>(c)) || c == ':' || c == '.';
  });
}

Result<EtcdEndpoint> ParseOne(std::string_view text, std::string_view entry) {
  if (entry.empty()) return Bad(text, "an empty endpoint");
  const std::string quoted = "'" + std::string(entry) + "'";
  if (entry.find("://") != std::string_view::npos) {
    return Bad(text, "endpoint " + quoted + " repeats a scheme; only the whole list starts with " +
                         std::string(kScheme));
  }
  if (entry.find_first_of("/@?#") != std::string_view::npos) {
    return Bad(text, "endpoint " + quoted + " has a path, credentials or a query; give HOST:PORT");
  }
  EtcdEndpoint ep;
  std::string_view port;
  if (entry.front() == '[') {
    const size_t close = entry.find(']');
    if (close == std::string_view::npos) return Bad(text, "endpoint " + quoted + " lacks ']'");
    ep.host = std::string(entry.substr(1, close - 1));
    if (!ValidIpv6(ep.host)) return Bad(text, "endpoint " + quoted + " is not an IPv6 address");
    if (close + 1 >= entry.size() || entry[close + 1] != ':') {
      return Bad(text, "endpoint " + quoted + " has no port");
    }
    port = entry.substr(close + 2);
  } else {
    const size_t colon = entry.rfind(':');
    if (colon == std::string_view::npos) return Bad(text, "endpoint " + quoted + " has no port");
    ep.host = std::string(entry.substr(0, colon));
    if (ep.host.find(':') != std::string::npos) {
      return Bad(text, "endpoint " + quoted + ": write an IPv6 address in brackets ([::1]:2379)");
    }
    if (!ValidHostName(ep.host)) {
      return Bad(text, "endpoint " + quoted + " has no valid host name or address");
    }
    port = entry.substr(colon + 1);
  }
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || value == 0 ||
      value > 65535) {
    return Bad(text, "endpoint " + quoted + " has no valid port (1-65535)");
  }
  ep.port = static_cast<uint16_t>(value);
  return ep;
}

}  // namespace

std::string EtcdEndpoint::Address() const {
  const std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return h + ":" + std::to_string(port);
}

Result<std::vector<EtcdEndpoint>> ParseEtcdEndpoints(std::string_view text) {
  if (text.substr(0, kScheme.size()) != kScheme) return Bad(text, "it does not start with etcd://");
  std::string_view rest = text.substr(kScheme.size());
  if (rest.empty()) return Bad(text, "no endpoint");
  std::vector<EtcdEndpoint> out;
  while (true) {
    const size_t comma = rest.find(',');
    SHALE_ASSIGN_OR_RETURN(EtcdEndpoint ep, ParseOne(text, rest.substr(0, comma)));
    if (std::find(out.begin(), out.end(), ep) != out.end()) {
      return Bad(text, "endpoint '" + ep.Address() + "' is given twice");
    }
    out.push_back(std::move(ep));
    if (out.size() > kMaxEtcdEndpoints) {
      return Bad(text, "more than " + std::to_string(kMaxEtcdEndpoints) + " endpoints");
    }
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  return out;
}

std::string FormatEtcdEndpoints(const std::vector<EtcdEndpoint>& endpoints) {
  std::string out(kScheme);
  for (size_t i = 0; i < endpoints.size(); ++i) {
    if (i > 0) out += ",";
    out += endpoints[i].Address();
  }
  return out;
}

}  // namespace shale::cluster
