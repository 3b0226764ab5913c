// The --cluster-store value: "etcd://HOST:PORT[,HOST:PORT...]".
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/common/result.h"

namespace shale::cluster {

// One etcd member's client address.
struct EtcdEndpoint {
  std::string host;  // a host name, an IPv4 address, or an IPv6 address without brackets
  uint16_t port = 0;

  // "host:port", or "[v6]:port": what gRPC dials and what error messages name.
  std::string Address() const;
  bool operator==(const EtcdEndpoint&) const = default;
};

// Most endpoints one store string may name (an etcd cluster has 1, 3 or 5 members).
inline constexpr size_t kMaxEtcdEndpoints = 16;

// Parses "etcd://HOST:PORT[,HOST:PORT...]". HOST is a DNS name, an IPv4 address or a bracketed
// IPv6 address; PORT is 1..65535. Empty entries, a missing scheme or port, a path, credentials,
// duplicates and more than kMaxEtcdEndpoints entries are InvalidArgument errors that quote the
// input and say what is wrong.
Result<std::vector<EtcdEndpoint>> ParseEtcdEndpoints(std::string_view text);

// "etcd://a:1,b:2": the inverse of ParseEtcdEndpoints.
std::string FormatEtcdEndpoints(const std::vector<EtcdEndpoint>& endpoints);

}  // namespace shale::cluster
