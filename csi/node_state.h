// The node service's record of what a staged volume is made of (docs/csi.md, "State files"):
// one small JSON file per volume, <data-dir>/csi/node/<volume>.json, rewritten before each next
// stage step so that a failed stage, or unstaging after a daemon restart, knows what to undo.
// Internal to the node service (node.cc), which holds its mutex around every write.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "csi/attach.h"
#include "engine/common/status.h"

namespace shale::csi {

struct DriverOptions;

// What a staged volume is made of; persisted as JSON.
struct NodeState {
  std::string volume;
  std::string staging;
  AttachMethod method = AttachMethod::kNbdfuseLoop;
  std::string attach_dir;  // nbdfuse mount point; the device file is attach_dir + "/nbd"
  std::string nbd_device;  // kernel nbd: /dev/nbdN
  int pid = 0;             // nbdfuse; kernel nbd: the client pid in /sys/block/nbdN/pid
  std::string loop;        // /dev/loopN
  bool block = false;
  std::string fs_type;
  bool read_only = false;
  uint64_t capacity = 0;
  std::string capability;  // CapabilityKey it was staged with ("" in older state files)
  std::map<std::string, std::string> targets;  // target path -> PublishKey ("" = unknown)
};

// The whole (small) file (at most ~1 MiB), "" if unreadable.
std::string ReadSmallFile(const std::string& path);
// <data-dir>/csi/attach/<volume>: where nbdfuse serves the volume (and its .pid and .log).
std::string AttachDir(const DriverOptions& o, const std::string& volume);
// The state file of `volume`; nullopt when there is none, it is unreadable, or it names an
// attach method this driver does not know (written by a newer one: do not guess how to undo it).
std::optional<NodeState> LoadState(const DriverOptions& o, const std::string& volume);
// Write-then-rename, synced: a crash leaves the old or the new state, never half of one.
Status SaveState(const DriverOptions& o, const NodeState& s);
// Removes the state file of `volume`; nothing to remove is not an error.
void RemoveState(const DriverOptions& o, const std::string& volume);
// The state of a staged volume `id`; nullopt when it is not staged here (or not a valid name).
std::optional<NodeState> LoadStaged(const DriverOptions& o, const std::string& id);

}  // namespace shale::csi
