#include "csi/params.h"

#include <charconv>
#include <string>

#include "engine/common/checksum.h"
#include "engine/common/units.h"

namespace shale::csi {

namespace {

// Parses a non-negative decimal integer (what QoS keys take); nullopt for anything else.
std::optional<int64_t> ParseInt(std::string_view text) {
  int64_t value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || ptr != end || value < 0) return std::nullopt;
  return value;
}

Result<bool> ParseBool(std::string_view key, std::string_view text) {
  if (text == "true" || text == "True" || text == "TRUE" || text == "1") return true;
  if (text == "false" || text == "False" || text == "FALSE" || text == "0") return false;
  return Status::InvalidArgument("parameter " + std::string(key) + "=\"" + std::string(text) +
                                 "\" must be true or false");
}

struct QosKey {
  std::string_view key;
  int64_t qos::QosSettings::*field;
};
constexpr QosKey kQosKeys[] = {
    {"iops", &qos::QosSettings::iops},
    {"readIops", &qos::QosSettings::read_iops},
    {"writeIops", &qos::QosSettings::write_iops},
    {"bps", &qos::QosSettings::bps},
    {"readBps", &qos::QosSettings::read_bps},
    {"writeBps", &qos::QosSettings::write_bps},
    {"burstIops", &qos::QosSettings::burst_iops},
    {"burstSeconds", &qos::QosSettings::burst_seconds},
    {"weight", &qos::QosSettings::weight},
    {"reservationIops", &qos::QosSettings::reservation_iops},
};

}  // namespace

std::string ShaleNameFor(std::string_view csi_name) {
  if (ValidateName("volume", csi_name).ok()) return std::string(csi_name);
  return "csi-" + HashContent128(csi_name.data(), csi_name.size()).ToHex();
}

Result<uint64_t> SizeForRange(int64_t required, int64_t limit, uint64_t minimum) {
  if (required < 0 || limit < 0) {
    return Status::InvalidArgument("capacity_range bytes must not be negative");
  }
  if (limit != 0 && limit < required) {
    return Status::InvalidArgument("capacity_range limit_bytes " + std::to_string(limit) +
                                   " is smaller than required_bytes " + std::to_string(required));
  }
  auto round_up = [](uint64_t v) {
    return (v + kSizeGranularity - 1) / kSizeGranularity * kSizeGranularity;
  };
  uint64_t size = 0;
  if (required > 0) {
    size = static_cast<uint64_t>(required);
  } else if (minimum > 0) {
    size = minimum;  // a clone without a range: the source's size
  } else if (limit > 0) {
    // Only a limit: the default size if it fits, else the largest size under the limit.
    size = std::min<uint64_t>(kDefaultVolumeSize,
                              static_cast<uint64_t>(limit) / kSizeGranularity * kSizeGranularity);
  } else {
    size = kDefaultVolumeSize;
  }
  size = std::max(size, minimum);
  if (size == 0 || size > kMaxVolumeSize) {
    return Status::OutOfRange("volume size must be 4 KiB.." + FormatSize(kMaxVolumeSize));
  }
  size = round_up(size);
  if (limit > 0 && size > static_cast<uint64_t>(limit)) {
    return Status::OutOfRange(
        "no volume size fits: the size would be " + std::to_string(size) +
        " bytes (multiples of 4096" +
        (minimum > 0 ? ", at least the source's " + std::to_string(minimum) : std::string()) +
        ") but limit_bytes is " + std::to_string(limit));
  }
  return size;
}

uint64_t EngineSizeFor(uint64_t capacity) {
  const uint64_t headroom = std::min(capacity * (kHeadroomFactor - 1), kMaxHeadroomBytes);
  return std::min(capacity + headroom, std::max(capacity, kMaxVolumeSize));
}

bool IsQosKey(std::string_view key) {
  for (const QosKey& k : kQosKeys) {
    if (k.key == key) return true;
  }
  return false;
}

Status ApplyQosParams(const std::map<std::string, std::string>& params, qos::QosSettings* settings,
                      bool* any) {
  for (const auto& [key, value] : params) {
    bool found = false;
    for (const QosKey& k : kQosKeys) {
      if (k.key != key) continue;
      found = true;
      std::optional<int64_t> v = ParseInt(value);
      if (!v) {
        return Status::InvalidArgument("parameter " + key + "=\"" + value +
                                       "\" must be a non-negative integer");
      }
      settings->*(k.field) = *v;
      *any = true;
    }
    if (!found) {
      return Status::InvalidArgument("unknown QoS parameter \"" + key +
                                     "\" (known: iops, readIops, writeIops, bps, readBps, "
                                     "writeBps, burstIops, burstSeconds, weight, reservationIops)");
    }
  }
  if (*any) {
    Status valid = settings->Validate();
    if (!valid.ok()) return valid;
  }
  return Status::Ok();
}

Result<VolumeParams> ParseVolumeParams(const std::map<std::string, std::string>& params) {
  VolumeParams out;
  std::map<std::string, std::string> qos_params;
  for (const auto& [key, value] : params) {
    if (key == kParamPool) {
      if (!value.empty()) {
        SHALE_RETURN_IF_ERROR(ValidateName("pool", value));
      }
      out.pool = value;
    } else if (key == kParamFsType) {
      if (value != "ext4" && value != "xfs" && !value.empty()) {
        return Status::InvalidArgument("parameter fsType=\"" + value +
                                       "\" is not supported (ext4 or xfs)");
      }
      out.fs_type = value;
    } else if (key == kParamReadOnlyClone) {
      SHALE_ASSIGN_OR_RETURN(out.read_only_clone, ParseBool(key, value));
    } else if (key == kParamReplicas) {
      uint32_t n = 0;
      const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
      if (ec != std::errc() || end != value.data() + value.size() || n < 1 || n > kMaxCsiReplicas) {
        return Status::InvalidArgument("parameter replicas=\"" + value + "\": a count from 1 to " +
                                       std::to_string(kMaxCsiReplicas));
      }
      out.replicas = n;
    } else if (key == kParamReplicaNodeSelector) {
      out.replica_node_selector = value;
    } else if (IsQosKey(key)) {
      qos_params[key] = value;
    } else if (std::string_view(key).starts_with(kSidecarPrefix)) {
      out.provenance[key] = value;
    } else {
      return Status::InvalidArgument(
          "unknown parameter \"" + key +
          "\" (known: pool, fsType, readOnlyClone, replicas, replicaNodeSelector, iops, "
          "readIops, writeIops, bps, readBps, writeBps, burstIops, burstSeconds, weight, "
          "reservationIops)");
    }
  }
  if (!out.replica_node_selector.empty() && out.replicas < 2) {
    return Status::InvalidArgument("parameter replicaNodeSelector=\"" + out.replica_node_selector +
                                   "\" needs replicas of 2 or more (a 1-replica volume lives on "
                                   "the node of its first pod)");
  }
  SHALE_RETURN_IF_ERROR(ApplyQosParams(qos_params, &out.qos, &out.has_qos));
  return out;
}

std::string Fingerprint(std::string_view csi_name, const std::map<std::string, std::string>& params,
                        std::string_view source, bool read_only) {
  // Length-prefixed fields: no two different requests encode the same.
  std::string enc;
  auto add = [&enc](std::string_view s) {
    enc += std::to_string(s.size());
    enc += ':';
    enc += s;
  };
  add(csi_name);
  for (const auto& [k, v] : params) {
    add(k);
    add(v);
  }
  add("source");
  add(source);
  add(read_only ? "ro" : "rw");
  return HashContent128(enc.data(), enc.size()).ToHex();
}

std::string MakeToken(std::string_view last) { return "n:" + std::string(last); }

std::optional<std::string> ParseToken(std::string_view token) {
  if (!token.starts_with("n:") || token.size() < 3) return std::nullopt;
  return std::string(token.substr(2));
}

}  // namespace shale::csi
