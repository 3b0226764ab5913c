#include "engine/common/net_address.h"

#include <arpa/inet.h>
#include <netinet/in.h>

namespace shale {

Result<ListenAddress> ParseListenAddress(std::string_view text, std::string_view what,
                                         std::string_view also) {
  const auto bad = [&](std::string_view why) {
    return Status::InvalidArgument(
        std::string(what) + " '" + std::string(text) + "': " + std::string(why) +
        " (expected IPv4:PORT, [IPv6]:PORT or localhost:PORT" + std::string(also) + ")");
  };
  const size_t colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return bad("no port");
  std::string host(text.substr(0, colon));
  const std::string_view port_text = text.substr(colon + 1);
  if (port_text.empty() || port_text.size() > 5) return bad("invalid port");
  uint32_t port = 0;
  for (char c : port_text) {
    if (c < '0' || c > '9') return bad("invalid port");
    port = port * 10 + static_cast<uint32_t>(c - '0');
  }
  if (port > 65535) return bad("port out of range");
  ListenAddress out;
  if (host == "localhost") host = "127.0.0.1";
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    auto* a6 = reinterpret_cast<sockaddr_in6*>(&out.addr);
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &a6->sin6_addr) != 1) {
      return bad("invalid IPv6 address");
    }
    out.len = sizeof(sockaddr_in6);
    return out;
  }
  auto* a4 = reinterpret_cast<sockaddr_in*>(&out.addr);
  a4->sin_family = AF_INET;
  a4->sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &a4->sin_addr) != 1) return bad("invalid IPv4 address");
  out.len = sizeof(sockaddr_in);
  return out;
}

std::string FormatAddress(const sockaddr_storage& addr) {
  char ip[INET6_ADDRSTRLEN] = {};
  if (addr.ss_family == AF_INET) {
    const auto* a4 = reinterpret_cast<const sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &a4->sin_addr, ip, sizeof(ip));
    return std::string(ip) + ":" + std::to_string(ntohs(a4->sin_port));
  }
  if (addr.ss_family == AF_INET6) {
    const auto* a6 = reinterpret_cast<const sockaddr_in6*>(&addr);
    inet_ntop(AF_INET6, &a6->sin6_addr, ip, sizeof(ip));
    return "[" + std::string(ip) + "]:" + std::to_string(ntohs(a6->sin6_port));
  }
  return "unknown";
}

}  // namespace shale
