// Backups in the CSI driver (docs/kubernetes.md, "Backups to S3"): the VolumeSnapshotClass
// parameters that make CreateSnapshot also back the snapshot up, and snapshot handles that name
// a backup ("s3://BUCKET/PREFIX/ID", pre-provisioned VolumeSnapshotContents), which
// CreateVolume restores, ListSnapshots describes and DeleteSnapshot deletes.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "backup/backup_manager.h"
#include "csi/csi.grpc.pb.h"
#include "engine/common/result.h"

namespace shale::csi {

inline constexpr std::string_view kParamBackupTo = "backupTo";
inline constexpr std::string_view kParamBackupEndpoint = "backupEndpoint";
inline constexpr std::string_view kParamBackupRegion = "backupRegion";
// Label a snapshot made with backupTo carries (where its backup goes).
inline constexpr std::string_view kLabelBackupTo = "csi.shale.io/backup-to";

// Whether a snapshot id names a backup rather than a local snapshot.
bool IsBackupHandle(std::string_view snapshot_id);

// Removes backupTo / backupEndpoint / backupRegion from VolumeSnapshotClass parameters (the rest
// become snapshot labels) and returns the target they name, if any. InvalidArgument for a bad
// URL or endpoint, or endpoint/region without backupTo.
Result<std::optional<backup::Target>> TakeBackupParams(std::map<std::string, std::string>* params);

// The manifest a backup handle names (endpoint and region: shaled's defaults). NotFound when
// there is no such backup.
Result<backup::Manifest> ReadBackupHandle(backup::BackupManager* backups, std::string_view handle);

// A backup as a CSI snapshot: id = the handle, its volume, capacity (the source snapshot's
// csi.shale.io/capacity label, else its size), creation time; always ready.
void FillBackupSnapshot(const backup::Manifest& m, std::string_view handle,
                        ::csi::v1::Snapshot* out);

}  // namespace shale::csi
