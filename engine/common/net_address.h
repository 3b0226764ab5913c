// TCP listen addresses as Shale's options spell them: IPv4:PORT, [IPv6]:PORT or localhost:PORT
// (port 0: any free port). Shared by the NBD server and the metrics endpoint.
#pragma once

#include <sys/socket.h>

#include <string>
#include <string_view>

#include "engine/common/result.h"

namespace shale {

struct ListenAddress {
  sockaddr_storage addr{};
  socklen_t len = 0;
};

// `what` names the setting in errors ("NBD listen address"): InvalidArgument "<what> '<text>':
// <why> (expected IPv4:PORT, [IPv6]:PORT or localhost:PORT<also>)".
Result<ListenAddress> ParseListenAddress(std::string_view text, std::string_view what,
                                         std::string_view also = {});

// "127.0.0.1:10809", "[::1]:10809", or "unknown" for another family.
std::string FormatAddress(const sockaddr_storage& addr);

}  // namespace shale
