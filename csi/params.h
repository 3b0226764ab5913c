// Pure helpers of the CSI driver (docs/csi.md): how CSI names become Shale names, how a
// capacity range becomes a size, how StorageClass / VolumeSnapshotClass / VolumeAttributesClass
// parameters are parsed. No engine, no I/O: unit-tested in params_test.cc.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "engine/common/result.h"
#include "qos/settings.h"

namespace shale::csi {

inline constexpr std::string_view kDriverName = "csi.shale.io";
inline constexpr std::string_view kTopologyKey = "topology.csi.shale.io/node";

// Sizes: the engine rounds volume sizes up to 4 KiB; so does the driver, before checking the
// limit, so that the size it reports is the size the volume has.
inline constexpr uint64_t kSizeGranularity = 4096;
inline constexpr uint64_t kDefaultVolumeSize = uint64_t{1} << 30;  // no capacity range: 1 GiB
inline constexpr uint64_t kMaxVolumeSize = uint64_t{256} << 40;    // the engine's limit
// Online expansion headroom (docs/csi.md, "Expansion"): the engine volume is created larger
// than the CSI capacity so a node can grow its attachment without reconnecting. Headroom is
// capped so huge volumes do not get a huge map.
inline constexpr uint64_t kHeadroomFactor = 4;
inline constexpr uint64_t kMaxHeadroomBytes = uint64_t{1} << 40;

// Labels the driver puts on engine volumes and snapshots.
inline constexpr std::string_view kLabelFingerprint = "csi.shale.io/fingerprint";
inline constexpr std::string_view kLabelCapacity = "csi.shale.io/capacity";
inline constexpr std::string_view kLabelManaged = "csi.shale.io/managed";
// A read-only clone of a replicated volume's snapshot (docs/csi.md, "Read-only clones on many
// nodes"): the nodes holding a copy of the snapshot (its accessible topology), the snapshot
// ("VOLUME@SNAP"), and, on a node's own copy made at NodeStage, "true" (deleted at NodeUnstage).
inline constexpr std::string_view kLabelCloneNodes = "csi.shale.io/ro-clone-nodes";
inline constexpr std::string_view kLabelCloneOf = "csi.shale.io/ro-clone-of";
inline constexpr std::string_view kLabelCloneCopy = "csi.shale.io/ro-clone-copy";
// The volume context key NodeStage reads it from.
inline constexpr std::string_view kContextCloneOf = "roCloneOf";

// The label every replica of a replicated volume carries (replication/replica_server.h; CSI does
// not link the replication library).
inline constexpr std::string_view kReplicaUuidLabel = "shale.io/replica-uuid";

// StorageClass parameter keys.
inline constexpr std::string_view kParamPool = "pool";
inline constexpr std::string_view kParamFsType = "fsType";
inline constexpr std::string_view kParamReadOnlyClone = "readOnlyClone";
inline constexpr std::string_view kParamReplicas = "replicas";
inline constexpr std::string_view kParamReplicaNodeSelector = "replicaNodeSelector";
// Prefix of the keys the sidecars add with --extra-create-metadata (pvc/name, pv/name,
// volumesnapshot/name, ...): recorded as labels for provenance, never interpreted.
inline constexpr std::string_view kSidecarPrefix = "csi.storage.k8s.io/";

// Maps a CSI name (any Unicode up to 128 bytes, and longer from some COs) to a Shale name:
// names that are valid Shale names ([A-Za-z0-9._-]{1,128}, starting alphanumeric) pass through
// unchanged — Kubernetes' "pvc-<uuid>" and "snapshot-<uuid>" do — everything else becomes
// "csi-" + 32 hex digits of XXH3-128(name). Deterministic, so a retry finds the same volume.
std::string ShaleNameFor(std::string_view csi_name);

// The request's size: required/limit are the CSI capacity range (0 = unset), `minimum` the
// size a content source imposes (0 = none). Rounds up to kSizeGranularity. InvalidArgument
// for negative values or limit < required; OutOfRange when no multiple of the granularity
// satisfies both the minimum and the limit, or above kMaxVolumeSize.
Result<uint64_t> SizeForRange(int64_t required, int64_t limit, uint64_t minimum);

// Engine size for CSI capacity `capacity`: capacity plus expansion headroom.
uint64_t EngineSizeFor(uint64_t capacity);

inline constexpr uint32_t kMaxCsiReplicas = 9;

struct VolumeParams {
  std::string pool;     // "" = the default pool
  std::string fs_type;  // "" = from the capability, else ext4
  bool read_only_clone = false;
  uint32_t replicas = 1;  // > 1: a replicated volume (cluster mode)
  // Only nodes whose `shale node label` labels meet it take a replica (cluster/node_selector.h;
  // checked by the daemon). Needs replicas > 1.
  std::string replica_node_selector;
  qos::QosSettings qos;
  bool has_qos = false;
  std::map<std::string, std::string> provenance;  // csi.storage.k8s.io/* keys
};

// Parses CreateVolume parameters. InvalidArgument naming the key for unknown keys and bad values
// (replicas: 1 to kMaxCsiReplicas).
Result<VolumeParams> ParseVolumeParams(const std::map<std::string, std::string>& params);
// Parses QoS keys only (ControllerModifyVolume's mutable_parameters): iops, readIops,
// writeIops, bps, readBps, writeBps, burstIops, burstSeconds, weight, reservationIops.
// Applies them onto `settings`. Unknown keys are InvalidArgument.
Status ApplyQosParams(const std::map<std::string, std::string>& params, qos::QosSettings* settings,
                      bool* any);
bool IsQosKey(std::string_view key);

// Stable fingerprint of what a CreateVolume asks for (name, parameters, content source,
// read-only): a retry with the same request has the same one.
std::string Fingerprint(std::string_view csi_name, const std::map<std::string, std::string>& params,
                        std::string_view source, bool read_only);

// ListVolumes/ListSnapshots tokens: "n:" + the last name returned. Anything else is not a token
// this driver issued (the caller answers ABORTED).
std::string MakeToken(std::string_view last);
std::optional<std::string> ParseToken(std::string_view token);

}  // namespace shale::csi
