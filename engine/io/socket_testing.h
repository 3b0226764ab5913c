// Test helper for sockets (header-only): wait until what was sent has reached the peer's kernel.
//
// Tests of receivers that must cope with data arriving in pieces (a large write whose payload
// comes in several segments, with the receive completing in between) send a piece, wait for it
// here, then send the next: no bare sleep, and the pieces really arrive apart.
#pragma once

#include <linux/sockios.h>
#include <sys/ioctl.h>

#include <chrono>
#include <thread>

namespace shale::testutil {

// Polls (at most `timeout`) until nothing sent on `fd` is queued any more (SIOCOUTQ is 0): on
// TCP, the peer's kernel acknowledged every byte; on a UNIX socket, the peer read them. False on
// timeout or when `fd` is not such a socket.
inline bool WaitDelivered(int fd, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    int queued = 0;
    if (ioctl(fd, SIOCOUTQ, &queued) != 0) return false;
    if (queued == 0) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

}  // namespace shale::testutil
