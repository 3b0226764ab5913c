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
// For a UNIX stream socket, which signals readable at every send whatever the mark, it leaves the
// mark alone, and a payload's receive takes MSG_WAITALL instead (ForRest).
#pragma once

#include <sys/socket.h>

#include <algorithm>
#include <cstddef>

namespace shale {

class ReceiveLowWater {
 public:
  // TCP caps the mark at half the largest receive buffer (tcp_rmem[2] / 2, 3 MiB by default).
  static constexpr size_t kMaxBytes = size_t{1} << 20;

  // `tcp`: the socket is TCP. On other sockets (UNIX: every send signals the socket readable
  // whatever the mark, so it saves nothing) Set does nothing.
  explicit ReceiveLowWater(bool tcp) : tcp_(tcp) {}

  // Sets the mark to `bytes` (clamped to [1, kMaxBytes]). A failed setsockopt only loses the
  // optimisation; it is tried again at the next call.
  void Set(int fd, size_t bytes) {
    const int want = static_cast<int>(std::clamp<size_t>(bytes, 1, kMaxBytes));
    if (!tcp_ || want == current_) return;
    if (::setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &want, sizeof(want)) == 0) current_ = want;
  }
  void Reset(int fd) { Set(fd, 1); }

  // The flags for a receive of `rest` bytes that must all arrive before anything else is read
  // (a payload): on TCP the mark is set to `rest` and the flags are 0 — never MSG_WAITALL with a
  // mark, as io_uring would go on waiting after a partial receive with the mark at more than is
  // left to come; on other sockets MSG_WAITALL, with which io_uring retries partial receives.
  int ForRest(int fd, size_t rest) {
    if (!tcp_) return MSG_WAITALL;
    Set(fd, rest);
    return 0;
  }

 private:
  const bool tcp_;
  int current_ = 1;
};

}  // namespace shale
