// The writer of the group snapshot tests (csi_group_test.cc, replication_snapshot_test.cc):
// round n writes the sequence number n to block 0 of every volume, in the order of its NBD
// connections, so members taken at one instant show the same or adjacent numbers, never a gap.
// Header-only.
#pragma once

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tests/e2e/harness.h"
#include "tests/e2e/nbd_raw_client.h"

namespace shale::e2e {

class SequenceWriter {
 public:
  // Starts writing on `clients` (connected to their exports); stops by itself after 120 s.
  explicit SequenceWriter(std::vector<std::unique_ptr<NbdRawClient>> clients)
      : clients_(std::move(clients)) {
    thread_ = std::thread([this] {
      std::string block(4096, '\0');
      const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(120);
      for (uint64_t n = 1; !stop_.load() && std::chrono::steady_clock::now() < end; ++n) {
        std::memcpy(block.data(), &n, 8);
        for (auto& client : clients_) {
          if (client->Request(NbdRawClient::kCmdWrite, 0, 4096, block) != 0) {
            failed_.store(true);
            return;
          }
        }
        rounds_.store(n);
      }
    });
  }
  ~SequenceWriter() { Stop(); }
  SequenceWriter(const SequenceWriter&) = delete;
  SequenceWriter& operator=(const SequenceWriter&) = delete;

  // Rounds acknowledged on every volume so far.
  uint64_t rounds() const { return rounds_.load(); }
  bool failed() const { return failed_.load(); }
  // Waits (bounded) until `more` further rounds are acknowledged; false on a failure or timeout.
  bool WaitMore(uint64_t more, std::chrono::seconds timeout = std::chrono::seconds(30)) {
    const uint64_t want = rounds() + more;
    return WaitFor([&] { return rounds() >= want || failed(); }, timeout) && !failed();
  }
  void Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }

  // The sequence number a block 0 read back holds.
  static uint64_t SeqOf(const std::string& block) {
    uint64_t v = 0;
    if (block.size() >= 8) std::memcpy(&v, block.data(), 8);
    return v;
  }

 private:
  std::vector<std::unique_ptr<NbdRawClient>> clients_;
  std::thread thread_;
  std::atomic<bool> stop_{false}, failed_{false};
  std::atomic<uint64_t> rounds_{0};
};

}  // namespace shale::e2e
