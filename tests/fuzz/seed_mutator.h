// The in-process mutator of the corpus replay tests: the kinds of edits libFuzzer makes (a bit
// flipped, a byte set, erased or inserted, a truncation, an interesting 32-bit value written in
// the protocol's byte order), reproducible from the seed of `rng`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace shale::fuzz {

enum class ByteOrder { kBig, kLittle };

// Applies 1..4 random edits to `input`. `values`: the 32-bit values worth writing (lengths,
// sizes, counts, statuses of the protocol under test), in `order`.
inline void MutateSeed(std::vector<uint8_t>& input, std::mt19937_64& rng,
                       std::span<const uint32_t> values, ByteOrder order) {
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int e = 0; e < edits && !input.empty(); ++e) {
    const size_t at = rng() % input.size();
    switch (rng() % 6) {
      case 0:
        input[at] ^= static_cast<uint8_t>(1u << (rng() % 8));
        break;
      case 1:
        input[at] = static_cast<uint8_t>(rng());
        break;
      case 2:
        input.erase(input.begin() + static_cast<std::ptrdiff_t>(at));
        break;
      case 3:
        input.insert(input.begin() + static_cast<std::ptrdiff_t>(at), static_cast<uint8_t>(rng()));
        break;
      case 4:
        input.resize(at);
        break;
      case 5: {
        const uint32_t v = values[rng() % values.size()];
        for (int b = 0; b < 4 && at + static_cast<size_t>(b) < input.size(); ++b) {
          const int shift = order == ByteOrder::kBig ? 24 - 8 * b : 8 * b;
          input[at + static_cast<size_t>(b)] = static_cast<uint8_t>(v >> shift);
        }
        break;
      }
    }
  }
}

}  // namespace shale::fuzz
