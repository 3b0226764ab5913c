#include "snapshot/digest.h"

#include <cstring>

#include "engine/common/assert.h"
#include "engine/common/checksum.h"

namespace shale::snapshot {

namespace {

constexpr char kRootTag[16] = {'S', 'H', 'A', 'L', 'E', '-', 'D', 'I',
                               'G', 'E', 'S', 'T', '-', 'V', '1', '\0'};

void PutLe(uint8_t* out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}

struct ZeroTable {
  std::array<Hash128, kDigestMaxLevels> level;
  ZeroTable() {
    std::vector<uint8_t> buf(kDigestBlockSize, 0);
    level[0] = HashContent128(buf.data(), buf.size());
    buf.resize(static_cast<size_t>(kDigestFanout) * 16);
    for (int k = 1; k < kDigestMaxLevels; ++k) {
      const auto c = CanonicalHash(level[k - 1]);
      for (uint32_t i = 0; i < kDigestFanout; ++i) std::memcpy(buf.data() + i * 16, c.data(), 16);
      level[k] = HashContent128(buf.data(), buf.size());
    }
  }
};

}  // namespace

std::array<uint8_t, 16> CanonicalHash(const Hash128& h) {
  std::array<uint8_t, 16> out;
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<uint8_t>(h.high >> (56 - 8 * i));
    out[8 + i] = static_cast<uint8_t>(h.low >> (56 - 8 * i));
  }
  return out;
}

Hash128 HashFromCanonical(const uint8_t* bytes) {
  Hash128 h;
  for (int i = 0; i < 8; ++i) {
    h.high = (h.high << 8) | bytes[i];
    h.low = (h.low << 8) | bytes[8 + i];
  }
  return h;
}

Result<Hash128> ParseDigestHex(std::string_view hex) {
  if (hex.size() != 32) {
    return Status::InvalidArgument("digest '" + std::string(hex) + "' must be 32 hex digits");
  }
  uint8_t bytes[16];
  for (size_t i = 0; i < 16; ++i) {
    int v = 0;
    for (size_t j = 0; j < 2; ++j) {
      const char c = hex[2 * i + j];
      int d;
      if (c >= '0' && c <= '9') {
        d = c - '0';
      } else if (c >= 'a' && c <= 'f') {
        d = c - 'a' + 10;
      } else if (c >= 'A' && c <= 'F') {
        d = c - 'A' + 10;
      } else {
        return Status::InvalidArgument("digest '" + std::string(hex) + "' must be 32 hex digits");
      }
      v = v * 16 + d;
    }
    bytes[i] = static_cast<uint8_t>(v);
  }
  return HashFromCanonical(bytes);
}

const Hash128& ZeroSubtreeHash(int level) {
  static const ZeroTable table;
  SHALE_CHECK(level >= 0 && level < kDigestMaxLevels, "zero subtree level ", level);
  return table.level[level];
}

DigestBuilder::DigestBuilder(uint64_t size_bytes) : size_(size_bytes) {
  for (auto& p : pending_) p.reserve(static_cast<size_t>(kDigestFanout) * 16);
}

void DigestBuilder::CheckAdd(uint64_t len) const {
  SHALE_CHECK(!finished_, "DigestBuilder used after Finish");
  SHALE_CHECK(position_ % kDigestBlockSize == 0,
              "DigestBuilder: content added after a partial block");
  SHALE_CHECK(len <= size_ - position_, "DigestBuilder: content past the size (", position_, " + ",
              len, " > ", size_, ")");
  SHALE_CHECK(len % kDigestBlockSize == 0 || position_ + len == size_,
              "DigestBuilder: partial block before the end");
}

void DigestBuilder::Push(int level, const Hash128& h) {
  SHALE_CHECK(level < kDigestMaxLevels, "digest tree too deep");
  auto& p = pending_[level];
  const auto c = CanonicalHash(h);
  p.insert(p.end(), c.begin(), c.end());
  if (p.size() == static_cast<size_t>(kDigestFanout) * 16) {
    const Hash128 node = HashContent128(p.data(), p.size());
    p.clear();
    Push(level + 1, node);
  }
}

void DigestBuilder::AddData(const uint8_t* data, uint64_t len) {
  CheckAdd(len);
  uint64_t off = 0;
  while (len - off >= kDigestBlockSize) {
    Push(0, HashContent128(data + off, kDigestBlockSize));
    off += kDigestBlockSize;
    ++blocks_;
  }
  if (off < len) {  // the final partial block, zero-padded
    uint8_t block[kDigestBlockSize] = {};
    std::memcpy(block, data + off, len - off);
    Push(0, HashContent128(block, kDigestBlockSize));
    ++blocks_;
  }
  position_ += len;
}

void DigestBuilder::AddZeros(uint64_t len) {
  CheckAdd(len);
  position_ += len;
  uint64_t n = (len + kDigestBlockSize - 1) / kDigestBlockSize;  // a partial tail pads to zeros
  while (n > 0) {
    // The largest full zero subtree that starts here and fits: the levels below it are empty
    // because blocks_ is a multiple of its span.
    int level = 0;
    uint64_t span = 1;
    while (level + 1 < kDigestMaxLevels - 1 && blocks_ % (span * kDigestFanout) == 0 &&
           n >= span * kDigestFanout) {
      span *= kDigestFanout;
      ++level;
    }
    Push(level, ZeroSubtreeHash(level));
    blocks_ += span;
    n -= span;
  }
}

Hash128 DigestBuilder::Finish() {
  SHALE_CHECK(!finished_ && position_ == size_, "DigestBuilder::Finish at ", position_, " of ",
              size_);
  finished_ = true;
  Hash128 top;
  if (blocks_ == 0) {
    top = HashContent128(nullptr, 0);
  } else {
    // Level k has n nodes in all; the last partial group of each level becomes one more node
    // of the level above, until a level has exactly one node.
    uint64_t n = blocks_;
    for (int level = 0;; ++level) {
      SHALE_CHECK(level < kDigestMaxLevels, "digest tree too deep");
      auto& p = pending_[level];
      if (n == 1) {
        SHALE_CHECK(p.size() == 16, "digest: lone top node missing");
        top = HashFromCanonical(p.data());
        break;
      }
      if (!p.empty()) {
        const Hash128 node = HashContent128(p.data(), p.size());
        p.clear();
        Push(level + 1, node);
      }
      n = (n + kDigestFanout - 1) / kDigestFanout;
    }
  }
  uint8_t root[48];
  std::memcpy(root, kRootTag, 16);
  PutLe(root + 16, size_, 8);
  PutLe(root + 24, kDigestBlockSize, 4);
  PutLe(root + 28, kDigestFanout, 4);
  const auto c = CanonicalHash(top);
  std::memcpy(root + 32, c.data(), 16);
  return HashContent128(root, sizeof(root));
}

Hash128 DigestOf(const uint8_t* data, uint64_t len) {
  DigestBuilder b(len);
  b.AddData(data, len);
  return b.Finish();
}

}  // namespace shale::snapshot
