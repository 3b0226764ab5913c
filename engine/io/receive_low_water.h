// ReceiveLowWater: a TCP socket's SO_RCVLOWAT, changed only when it differs.
//
// A receive armed for the rest of a large payload (a 1 MiB NBD or replicated write) would
// otherwise complete, or wake the io_uring worker blocked in it, at every segment that arrives:
// on loopback each wake-up is paid by the sender's thread as well. With the low-water mark at the
// bytes still to come (capped), TCP signals the socket readable once that much is there
// (tcp_data_ready), so a megabyte arrives in one or two completions. Set it back to 1 before
// receiving headers. Only ever raise it to bytes the peer must still send: the receive then
// still ends at the stream's end (EOF and errors wake it regardless).
//
// UNIX stream sockets accept the option but signal readable at every send: harmless there.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstddef>

namespace shale {

class ReceiveLowWater {
 public:
  // TCP caps the mark at half the largest receive buffer (tcp_rmem[2] / 2, 3 MiB by default).
  static constexpr size_t kMaxBytes = size_t{1} << 20;

  // Sets the mark to `bytes` (clamped to [1, kMaxBytes]); a failed setsockopt only loses the
  // optimisation, and is not retried for the same value.
  void Set(int fd, size_t bytes) {
    const int want = static_cast<int>(std::clamp<size_t>(bytes, 1, kMaxBytes));
    if (want == current_) return;
    ::setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &want, sizeof(want));
    current_ = want;
  }
  void Reset(int fd) { Set(fd, 1); }

  // The flags for a receive of `rest` bytes that must all arrive before anything else is read
  // (a payload): on TCP the mark is set to `rest` and the flags are 0 — never MSG_WAITALL with a
  // mark, as io_uring would go on waiting after a partial receive with the mark at more than is
  // left to come; on other sockets (UNIX: every send signals readable, so the mark saves
  // nothing) MSG_WAITALL, with which io_uring retries partial receives itself.
  int ForRest(int fd, size_t rest) {
    if (tcp_ < 0) {
      int protocol = 0;
      socklen_t len = sizeof(protocol);
      tcp_ =
          getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &len) == 0 && protocol == IPPROTO_TCP;
    }
    if (tcp_ == 0) return MSG_WAITALL;
    Set(fd, rest);
    return 0;
  }

 private:
  int current_ = 1;
  int tcp_ = -1;  // unknown until ForRest
};

}  // namespace shale
