// Node service of csi.shale.io (docs/csi.md, "Node"): attach a volume as a block device
// (kernel nbd where the host has it, else nbdfuse, on the daemon's NBD UNIX socket; a loop
// device on top limits it to the CSI capacity), format it if blank, mount it at the
// staging path, bind-mount it to each target. Everything done is written to a small JSON state
// file per volume (<data-dir>/csi/node/<volume>.json) before the next step, so that unstaging
// after a daemon restart still knows what to undo.
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "csi/attach.h"
#include "csi/driver.h"
#include "csi/driver_internal.h"
#include "csi/exec.h"
#include "csi/params.h"
#include "engine/common/log.h"
#include "engine/engine.h"

namespace shale::csi {

namespace v1 = ::csi::v1;
namespace fs = std::filesystem;

namespace {

constexpr auto kAttachTimeout = std::chrono::seconds(20);
constexpr auto kMkfsTimeout = std::chrono::minutes(5);
constexpr auto kToolTimeout = std::chrono::seconds(60);

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

nlohmann::json ToJson(const NodeState& s) {
  return {{"volume", s.volume},
          {"staging", s.staging},
          {"method", std::string(AttachMethodName(s.method))},
          {"attach_dir", s.attach_dir},
          {"nbd_device", s.nbd_device},
          {"pid", s.pid},
          {"loop", s.loop},
          {"block", s.block},
          {"fs_type", s.fs_type},
          {"read_only", s.read_only},
          {"capacity", s.capacity},
          {"capability", s.capability},
          {"targets", s.targets}};
}

std::optional<NodeState> FromJson(const nlohmann::json& j) {
  if (!j.is_object()) return std::nullopt;
  NodeState s;
  auto str = [&j](const char* k) {
    return j.contains(k) && j[k].is_string() ? j[k].get<std::string>() : std::string();
  };
  s.volume = str("volume");
  s.staging = str("staging");
  s.attach_dir = str("attach_dir");
  s.nbd_device = str("nbd_device");
  s.loop = str("loop");
  s.fs_type = str("fs_type");
  s.capability = str("capability");
  std::optional<AttachMethod> method = ParseAttachMethod(str("method"));
  if (!method) return std::nullopt;  // written by a newer driver: do not guess how to undo it
  s.method = *method;
  if (j.contains("pid") && j["pid"].is_number_integer()) s.pid = j["pid"].get<int>();
  if (j.contains("block") && j["block"].is_boolean()) s.block = j["block"].get<bool>();
  if (j.contains("read_only") && j["read_only"].is_boolean()) {
    s.read_only = j["read_only"].get<bool>();
  }
  if (j.contains("capacity") && j["capacity"].is_number_unsigned()) {
    s.capacity = j["capacity"].get<uint64_t>();
  }
  if (j.contains("targets") && j["targets"].is_object()) {
    for (const auto& [target, key] : j["targets"].items()) {
      s.targets[target] = key.is_string() ? key.get<std::string>() : std::string();
    }
  } else if (j.contains("targets") && j["targets"].is_array()) {  // older state files
    for (const auto& t : j["targets"]) {
      if (t.is_string()) s.targets[t.get<std::string>()] = "";
    }
  }
  if (s.volume.empty()) return std::nullopt;
  return s;
}

// The whole (small) file, "" if unreadable. POSIX read: iostreams' buffer iterators trip
// -Wnull-dereference in libstdc++ 12.
std::string ReadSmallFile(const std::string& path) {
  std::string out;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0 && out.size() < (1 << 20)) {
    out.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return out;
}

std::string StateDir(const DriverOptions& o) { return o.data_dir + "/csi/node"; }
std::string StatePath(const DriverOptions& o, const std::string& volume) {
  return StateDir(o) + "/" + volume + ".json";
}
std::string AttachDir(const DriverOptions& o, const std::string& volume) {
  return o.data_dir + "/csi/attach/" + volume;
}

std::optional<NodeState> LoadState(const DriverOptions& o, const std::string& volume) {
  const std::string text = ReadSmallFile(StatePath(o, volume));
  if (text.empty()) return std::nullopt;
  return FromJson(nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false));
}

// Write-then-rename, synced: a crash leaves the old or the new state, never half of one.
Status SaveState(const DriverOptions& o, const NodeState& s) {
  std::error_code ec;
  fs::create_directories(StateDir(o), ec);
  if (ec) return Status::FromErrno(ec.value(), "create " + StateDir(o));
  const std::string path = StatePath(o, s.volume);
  const std::string tmp = path + ".tmp";
  const std::string text = ToJson(s).dump(2);
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Status::FromErrno(errno, "write " + tmp);
  const bool ok =
      write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && fsync(fd) == 0;
  const int err = errno;
  close(fd);
  if (!ok) return Status::FromErrno(err, "write " + tmp);
  if (rename(tmp.c_str(), path.c_str()) != 0) return Status::FromErrno(errno, "rename " + path);
  return Status::Ok();
}

void RemoveState(const DriverOptions& o, const std::string& volume) {
  std::error_code ec;
  fs::remove(StatePath(o, volume), ec);
}

// The state of a staged volume `id`; nullopt when it is not staged here (or not a valid name).
std::optional<NodeState> LoadStaged(const DriverOptions& o, const std::string& id) {
  if (!ValidateName("volume", id).ok()) return std::nullopt;
  return LoadState(o, id);
}

grpc::Status NotStaged(const std::string& id) {
  return grpc::Status(grpc::StatusCode::NOT_FOUND, "volume " + id + " is not staged on this node");
}

std::string TrimRight(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// What a capability asks of a staged volume, to tell a retry (same key: OK) from an
// incompatible request (ALREADY_EXISTS, spec "Volume published but is incompatible"). `fs_type`
// is the requested one (after the volume context default), not the one found on the device.
std::string CapabilityKey(const v1::VolumeCapability& cap, const std::string& fs_type) {
  std::vector<std::string> flags(cap.mount().mount_flags().begin(),
                                 cap.mount().mount_flags().end());
  std::sort(flags.begin(), flags.end());
  std::string key = "mode=" + std::to_string(cap.access_mode().mode()) +
                    (cap.has_block() ? ";block" : ";mount;fs=" + fs_type);
  for (const std::string& f : flags) key += ";" + f;
  return key;
}
std::string PublishKey(const v1::VolumeCapability& cap, bool readonly) {
  return CapabilityKey(cap, cap.mount().fs_type()) + (readonly ? ";ro" : ";rw");
}
bool IsSingleWriterKey(const std::string& key) {
  return key.starts_with(
      "mode=" + std::to_string(v1::VolumeCapability::AccessMode::SINGLE_NODE_SINGLE_WRITER) + ";");
}

// Undoes the octal escapes of /proc/self/mountinfo ("\040" for a space).
std::string Unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      const std::string oct = s.substr(i + 1, 3);
      if (oct.size() == 3 &&
          std::all_of(oct.begin(), oct.end(), [](char c) { return c >= '0' && c <= '7'; })) {
        out += static_cast<char>(std::stoi(oct, nullptr, 8));
        i += 3;
        continue;
      }
    }
    out += s[i];
  }
  return out;
}

std::string Canonical(const std::string& path) {
  std::error_code ec;
  fs::path p = fs::weakly_canonical(path, ec);
  return ec ? path : p.string();
}

bool IsMountPoint(const std::string& path) {
  const std::string want = Canonical(path);
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, devno, root, mount_point;
    fields >> id >> parent >> devno >> root >> mount_point;
    if (Unescape(mount_point) == want) return true;
  }
  return false;
}

Status Run(const std::vector<std::string>& argv, std::chrono::milliseconds timeout = kToolTimeout) {
  Result<ExecResult> r = Exec(argv, timeout);
  if (!r.ok()) return r.status();
  if (r->exit_code != 0 || r->timed_out) return Status::Internal(r->Describe(argv[0]));
  return Status::Ok();
}

Status Unmount(const std::string& path) {
  if (!IsMountPoint(path)) return Status::Ok();
  Status st = Run({"umount", path});
  if (!st.ok() && IsMountPoint(path)) return st;
  return Status::Ok();
}

bool ProcessIsNbdfuse(int pid) {
  if (pid <= 0) return false;
  const std::string cmd = ReadSmallFile("/proc/" + std::to_string(pid) + "/cmdline");
  return cmd.find("nbdfuse") != std::string::npos;
}

// The file or device under the loop device.
std::string BackingFile(const NodeState& s) {
  return s.method == AttachMethod::kKernelNbd ? s.nbd_device : s.attach_dir + "/nbd";
}

// The kernel nbd device still connected by the client we started (a restart may have let
// another attachment reuse it).
bool NbdDeviceIsOurs(const NodeState& s) {
  return !s.nbd_device.empty() && s.pid > 0 && NbdDevicePid(s.nbd_device) == s.pid;
}

// Whether the NBD connection under the staged volume is still there.
bool AttachmentAlive(const NodeState& s) {
  return s.method == AttachMethod::kKernelNbd ? NbdDeviceIsOurs(s) : ProcessIsNbdfuse(s.pid);
}

std::string NbdClientTool() {
  std::string path = FindTool("nbd-client");
  return path.empty() ? "nbd-client" : path;
}

// The loop device still bound to our nbdfuse file (it may have been reused after a restart).
bool LoopBacksFile(const std::string& loop, const std::string& file) {
  if (loop.rfind("/dev/loop", 0) != 0) return false;
  std::ifstream in("/sys/block/" + loop.substr(5) + "/loop/backing_file");
  std::string backing;
  std::getline(in, backing);
  return !backing.empty() && Canonical(backing) == Canonical(file);
}

// Undoes an attachment, tolerating every step already undone. Order: filesystem, loop, then
// the NBD connection: kernel nbd (nbd-client -d), or FUSE and the nbdfuse process (which exits
// on its own once its FUSE mount is gone).
Status Detach(const NodeState& s) {
  if (!s.block && !s.staging.empty()) SHALE_RETURN_IF_ERROR(Unmount(s.staging));
  const std::string file = BackingFile(s);
  if (!s.loop.empty() && !file.empty() && LoopBacksFile(s.loop, file)) {
    SHALE_RETURN_IF_ERROR(Run({"losetup", "-d", s.loop}));
    // Detach is asynchronous in the kernel; wait until the loop lets go of the file, else the
    // FUSE unmount below finds it busy.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (LoopBacksFile(s.loop, file) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  if (s.method == AttachMethod::kKernelNbd && NbdDeviceIsOurs(s)) {
    SHALE_RETURN_IF_ERROR(Run(NbdClientDisconnectArgv(NbdClientTool(), s.nbd_device)));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (NbdDeviceIsOurs(s) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  if (!s.attach_dir.empty() && IsMountPoint(s.attach_dir)) {
    Status st = Run({"fusermount3", "-u", s.attach_dir});
    if (!st.ok() && IsMountPoint(s.attach_dir)) return st.WithContext("unmount nbdfuse");
  }
  if (ProcessIsNbdfuse(s.pid)) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (ProcessIsNbdfuse(s.pid) && std::chrono::steady_clock::now() < deadline) {
      ReapIfExited(s.pid);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (ProcessIsNbdfuse(s.pid)) kill(s.pid, SIGKILL);
    ReapIfExited(s.pid);
  }
  std::error_code ec;
  if (!s.attach_dir.empty()) {
    fs::remove(s.attach_dir + ".pid", ec);
    fs::remove(s.attach_dir, ec);
  }
  return Status::Ok();
}

Result<uint64_t> BlockDeviceSize(const std::string& dev) {
  int fd = open(dev.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "open " + dev);
  uint64_t size = 0;
  const int rc = ioctl(fd, BLKGETSIZE64, &size);
  const int err = errno;
  close(fd);
  if (rc != 0) return Status::FromErrno(err, "BLKGETSIZE64 " + dev);
  return size;
}

// Moves the loop device's size limit (the CSI capacity inside the larger engine volume).
Status SetLoopSizeLimit(const std::string& loop, uint64_t limit) {
  int fd = open(loop.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "open " + loop);
  loop_info64 info{};
  int rc = ioctl(fd, LOOP_GET_STATUS64, &info);
  if (rc == 0) {
    info.lo_sizelimit = limit;
    rc = ioctl(fd, LOOP_SET_STATUS64, &info);
  }
  if (rc == 0) rc = ioctl(fd, LOOP_SET_CAPACITY, 0);
  const int err = errno;
  close(fd);
  if (rc != 0) return Status::FromErrno(err, "resize loop device " + loop);
  return Status::Ok();
}

// Filesystem type on the device, "" when blank (blkid exits 2 when it finds no signature).
Result<std::string> ProbeFilesystem(const std::string& dev) {
  Result<ExecResult> r = Exec({"blkid", "-p", "-o", "value", "-s", "TYPE", dev}, kToolTimeout);
  if (!r.ok()) return r.status();
  if (r->exit_code == 2) return std::string();
  if (r->exit_code != 0) return Status::Internal(r->Describe("blkid"));
  return TrimRight(r->out);
}

// A capability NodeStage/NodePublish cannot serve: INVALID_ARGUMENT when it is invalid in
// itself, FAILED_PRECONDITION (spec "Exceeds capabilities") when it is valid but this volume
// cannot do it (a writer mode on a read-only clone).
grpc::Status CheckNodeCapability(const v1::VolumeCapability& cap, bool read_only) {
  if (Status st = CheckCapability(cap, /*read_only=*/false); !st.ok()) return ToGrpc(st);
  if (Status st = CheckCapability(cap, read_only); !st.ok()) {
    return Precondition(std::string(st.message()));
  }
  return grpc::Status::OK;
}

// The size of the NBD attachment under the loop device: the export's size when it connected.
Result<uint64_t> AttachedSize(const NodeState& s) {
  if (s.method == AttachMethod::kKernelNbd) return BlockDeviceSize(s.nbd_device);
  std::error_code ec;
  const uint64_t size = fs::file_size(BackingFile(s), ec);
  if (ec) return Status::FromErrno(ec.value(), "size of " + BackingFile(s));
  return size;
}

}  // namespace

grpc::Status NodeService::NodeStageVolume(grpc::ServerContext*,
                                          const v1::NodeStageVolumeRequest* request,
                                          v1::NodeStageVolumeResponse*) {
  if (grpc::Status st = RequireFields(
          "NodeStageVolume", {{"volume_id", !request->volume_id().empty()},
                              {"staging_target_path", !request->staging_target_path().empty()},
                              {"volume_capability", request->has_volume_capability()}});
      !st.ok()) {
    return st;
  }
  auto info = FindVolume(engine_, request->volume_id());
  if (!info.ok()) return ToGrpc(info.status());
  const auto& cap = request->volume_capability();
  if (grpc::Status st = CheckNodeCapability(cap, info->read_only); !st.ok()) return st;
  const bool block = cap.has_block();
  std::string fs_type = block ? "" : cap.mount().fs_type();
  if (!block && fs_type.empty()) {
    auto it = request->volume_context().find("fsType");
    fs_type = it != request->volume_context().end() && !it->second.empty() ? it->second : "ext4";
  }
  if (!block && fs_type != "ext4" && fs_type != "xfs") {
    return Invalid("fsType \"" + fs_type + "\" is not supported (ext4 or xfs)");
  }
  const std::string staging = request->staging_target_path();
  const std::string capability = CapabilityKey(cap, fs_type);

  std::lock_guard lock(mu_);
  if (std::optional<NodeState> existing = LoadState(options_, info->name)) {
    if (Canonical(existing->staging) != Canonical(staging)) {
      return grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                          "volume " + info->name + " is staged at " + existing->staging);
    }
    if (existing->block != block ||
        (!existing->capability.empty() && existing->capability != capability)) {
      return grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                          "volume " + info->name + " is staged at " + staging +
                              " with another capability (" + existing->capability + ")");
    }
    if (block || IsMountPoint(staging)) return grpc::Status::OK;  // already done
    // A half-done stage (crash, restart): undo it and start over.
    if (Status st = Detach(*existing); !st.ok()) return ToGrpc(st);
    RemoveState(options_, info->name);
  }
  if (options_.nbd_socket.empty()) {
    return Precondition(
        "shaled runs without an NBD UNIX socket (--nbd-socket none); the node "
        "service attaches volumes through it");
  }

  NodeState s;
  s.volume = info->name;
  s.staging = staging;
  s.attach_dir = AttachDir(options_, info->name);
  s.block = block;
  s.fs_type = fs_type;
  s.read_only = info->read_only;
  s.capacity = CsiCapacity(engine_, *info);
  s.capability = capability;
  const KernelNbdProbe probe = ProbeKernelNbd();
  s.method = ChooseAttachMethod(probe);
  auto fail = [&](const Status& st, const std::string& what) {
    Status undone = Detach(s);
    if (!undone.ok()) {
      SHALE_LOG_WARN("csi: cleanup after a failed stage was incomplete", {"volume", s.volume},
                     {"error", undone.ToString()});
    } else {
      RemoveState(options_, s.volume);
    }
    return ToGrpc(st.WithContext(what));
  };

  std::error_code ec;
  fs::create_directories(s.attach_dir, ec);
  if (ec) return ToGrpc(Status::FromErrno(ec.value(), "create " + s.attach_dir));
  if (!block) {
    fs::create_directories(staging, ec);
    if (ec) return ToGrpc(Status::FromErrno(ec.value(), "create " + staging));
  }
  if (Status st = SaveState(options_, s); !st.ok()) return ToGrpc(st);
  // Each step is recorded before the next, so that a failure or a restart knows what to undo.
  auto save_or_fail = [&](const char* step) {
    Status st = SaveState(options_, s);
    return st.ok() ? grpc::Status::OK : fail(st, std::string("save node state after ") + step);
  };

  // 1. Attach the export: kernel nbd where the host has it, else nbdfuse (docs/csi.md).
  const auto deadline = std::chrono::steady_clock::now() + kAttachTimeout;
  if (s.method == AttachMethod::kKernelNbd) {
    std::optional<std::string> device = PickFreeNbdDevice(ListNbdDevices());
    if (!device) return fail(Status::NoSpace("every /dev/nbdN is in use"), "attach");
    s.nbd_device = *device;
    if (grpc::Status st = save_or_fail("picking the nbd device"); !st.ok()) return st;
    if (Status st = Run(NbdClientConnectArgv(probe.nbd_client, {.unix_socket = options_.nbd_socket},
                                             info->name, s.nbd_device, s.read_only));
        !st.ok()) {
      return fail(st, "nbd-client");
    }
    // nbd-client returns once the device is configured; its pid (in sysfs while connected)
    // tells our connection from a later one on the same device.
    while ((s.pid = NbdDevicePid(s.nbd_device)) == 0 &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (s.pid == 0) {
      Run(NbdClientDisconnectArgv(probe.nbd_client, s.nbd_device)).IgnoreError();
      return fail(Status::Unavailable(s.nbd_device + " has no client after nbd-client"), "attach");
    }
    if (grpc::Status st = save_or_fail("nbd-client"); !st.ok()) return st;
    bool sized = false;
    while (!sized && std::chrono::steady_clock::now() < deadline) {
      auto size = BlockDeviceSize(s.nbd_device);
      sized = size.ok() && *size == info->size_bytes;
      if (!sized) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!sized) {
      return fail(Status::Unavailable(s.nbd_device + " did not get the size of " + info->name),
                  "attach");
    }
  } else {
    // nbdfuse: the export as a file (<attach_dir>/nbd).
    const std::string pidfile = s.attach_dir + ".pid";
    fs::remove(pidfile, ec);
    std::vector<std::string> argv = {"nbdfuse"};
    if (s.read_only) argv.push_back("-r");
    argv.insert(argv.end(), {"-P", pidfile, s.attach_dir,
                             "nbd+unix:///" + info->name + "?socket=" + options_.nbd_socket});
    Result<pid_t> pid = SpawnDetached(argv, s.attach_dir + ".log");
    if (!pid.ok()) return fail(pid.status(), "start nbdfuse");
    s.pid = *pid;
    if (grpc::Status st = save_or_fail("nbdfuse"); !st.ok()) return st;
    bool up = false;
    while (std::chrono::steady_clock::now() < deadline) {
      std::error_code size_ec;
      if (fs::exists(pidfile, size_ec) &&
          fs::file_size(BackingFile(s), size_ec) == info->size_bytes) {
        up = true;
        break;
      }
      if (kill(s.pid, 0) != 0 || !ProcessIsNbdfuse(s.pid)) break;
      ReapIfExited(s.pid);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!up) {
      std::ifstream log(s.attach_dir + ".log");
      std::string last, line;
      while (std::getline(log, line)) last = line;
      return fail(Status::Unavailable("nbdfuse did not attach " + info->name +
                                      (last.empty() ? std::string() : ": " + last)),
                  "attach");
    }
  }

  // 2. A loop device over it, limited to the CSI capacity (the engine volume has headroom for
  //    online expansion: docs/csi.md, "Expansion").
  std::vector<std::string> losetup = {"losetup", "--find", "--show", "--sizelimit",
                                      std::to_string(s.capacity)};
  if (s.read_only) losetup.push_back("--read-only");
  losetup.push_back(BackingFile(s));
  Result<ExecResult> loop = Exec(losetup, kToolTimeout);
  if (!loop.ok()) return fail(loop.status(), "losetup");
  if (loop->exit_code != 0) return fail(Status::Internal(loop->Describe("losetup")), "attach");
  s.loop = TrimRight(loop->out);
  if (grpc::Status st = save_or_fail("losetup"); !st.ok()) return st;
  if (block) return grpc::Status::OK;

  // 3. Format only a blank device: an existing filesystem (a clone's, a restaged volume's)
  //    is data.
  Result<std::string> existing_fs = ProbeFilesystem(s.loop);
  if (!existing_fs.ok()) return fail(existing_fs.status(), "probe filesystem");
  if (existing_fs->empty()) {
    if (s.read_only) {
      return fail(Status::FailedPrecondition("read-only volume " + s.volume +
                                             " has no filesystem to mount"),
                  "stage");
    }
    std::vector<std::string> mkfs =
        fs_type == "xfs"
            ? std::vector<std::string>{"mkfs.xfs", "-q", "-f", "-K", s.loop}
            : std::vector<std::string>{
                  "mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=1", s.loop};
    if (Status st = Run(mkfs, kMkfsTimeout); !st.ok()) return fail(st, "format");
  } else if (*existing_fs != "ext4" && *existing_fs != "xfs") {
    return fail(Status::FailedPrecondition("volume " + s.volume + " holds a " + *existing_fs +
                                           " filesystem; only ext4 and xfs are mounted"),
                "stage");
  } else {
    s.fs_type = *existing_fs;
  }

  // 4. Mount. Clones share their source's filesystem UUID: xfs must be told (nouuid).
  //    Read-only clones cannot replay a journal: skip it (noload / norecovery).
  std::vector<std::string> opts;
  if (s.fs_type == "xfs") opts.push_back("nouuid");
  if (s.read_only) {
    opts.push_back("ro");
    opts.push_back(s.fs_type == "xfs" ? "norecovery" : "noload");
  }
  for (const std::string& flag : cap.mount().mount_flags()) opts.push_back(flag);
  std::vector<std::string> mount = {"mount", "-t", s.fs_type};
  if (!opts.empty()) {
    std::string joined;
    for (const std::string& o : opts) joined += (joined.empty() ? "" : ",") + o;
    mount.insert(mount.end(), {"-o", joined});
  }
  mount.insert(mount.end(), {s.loop, staging});
  if (Status st = Run(mount); !st.ok()) return fail(st, "mount");
  if (grpc::Status st = save_or_fail("mount"); !st.ok()) return st;
  SHALE_LOG_INFO("csi: volume staged", {"volume", s.volume},
                 {"method", std::string(AttachMethodName(s.method))}, {"loop", s.loop},
                 {"fs", s.fs_type}, {"staging", staging});
  return grpc::Status::OK;
}

grpc::Status NodeService::NodeUnstageVolume(grpc::ServerContext*,
                                            const v1::NodeUnstageVolumeRequest* request,
                                            v1::NodeUnstageVolumeResponse*) {
  if (grpc::Status st = RequireFields(
          "NodeUnstageVolume", {{"volume_id", !request->volume_id().empty()},
                                {"staging_target_path", !request->staging_target_path().empty()}});
      !st.ok()) {
    return st;
  }
  if (!ValidateName("volume", request->volume_id()).ok()) return grpc::Status::OK;
  std::lock_guard lock(mu_);
  std::optional<NodeState> s = LoadStaged(options_, request->volume_id());
  if (!s) {
    // Nothing of ours; a mount left at the staging path is still unmounted (idempotent).
    return ToGrpc(Unmount(request->staging_target_path()));
  }
  for (const auto& [t, key] : s->targets) {
    if (IsMountPoint(t)) {
      return Precondition("volume " + s->volume + " is still published at " + t);
    }
  }
  if (Status st = Detach(*s); !st.ok()) return ToGrpc(st.WithContext("unstage " + s->volume));
  RemoveState(options_, s->volume);
  // The NBD server releases the export asynchronously after nbdfuse disconnects; the CO's next
  // call is often DeleteVolume, which must not find the volume busy. Wait (bounded) for the
  // release; other clients (an admin's NBD export) may keep it open, which is theirs to end.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (;;) {
    auto info = engine_->GetVolume(s->volume);
    if (!info.ok() || info->open_count == 0) break;
    if (std::chrono::steady_clock::now() >= deadline) {
      SHALE_LOG_WARN("csi: volume still open after unstage", {"volume", s->volume},
                     {"open_count", info->open_count});
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  SHALE_LOG_INFO("csi: volume unstaged", {"volume", s->volume});
  return grpc::Status::OK;
}

grpc::Status NodeService::NodePublishVolume(grpc::ServerContext*,
                                            const v1::NodePublishVolumeRequest* request,
                                            v1::NodePublishVolumeResponse*) {
  if (grpc::Status st = RequireFields(
          "NodePublishVolume", {{"volume_id", !request->volume_id().empty()},
                                {"staging_target_path", !request->staging_target_path().empty()},
                                {"target_path", !request->target_path().empty()},
                                {"volume_capability", request->has_volume_capability()}});
      !st.ok()) {
    return st;
  }
  std::lock_guard lock(mu_);
  std::optional<NodeState> s = LoadStaged(options_, request->volume_id());
  if (!s) {
    if (auto info = FindVolume(engine_, request->volume_id()); !info.ok()) {
      return ToGrpc(info.status());
    }
    return Precondition("volume " + request->volume_id() + " is not staged on this node");
  }
  if (Canonical(s->staging) != Canonical(request->staging_target_path())) {
    return Precondition("volume " + s->volume + " is staged at " + s->staging + ", not at " +
                        request->staging_target_path());
  }
  const auto& cap = request->volume_capability();
  if (grpc::Status st = CheckNodeCapability(cap, s->read_only); !st.ok()) return st;
  if (cap.has_block() != s->block) {
    return Invalid("access type differs from the one the volume was staged with");
  }
  const bool read_only =
      request->readonly() || s->read_only || IsReaderOnlyMode(cap.access_mode().mode());
  const std::string target = request->target_path();
  const std::string key = PublishKey(cap, request->readonly());
  if (IsMountPoint(target)) {
    auto it = s->targets.find(target);
    if (it == s->targets.end()) {
      return grpc::Status(grpc::StatusCode::ALREADY_EXISTS, target + " is already a mount point");
    }
    // Spec: the same target with other arguments (capability, readonly) is ALREADY_EXISTS.
    if (!it->second.empty() && it->second != key) {
      return grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                          "volume " + s->volume + " is published at " + target +
                              " with another capability or readonly flag (" + it->second + ")");
    }
    return grpc::Status::OK;
  }
  // SINGLE_NODE_SINGLE_WRITER (ReadWriteOncePod): one target at a time (spec: a second target
  // is FAILED_PRECONDITION). SINGLE_NODE_WRITER keeps Kubernetes' ReadWriteOnce meaning: any
  // number of pods on this node.
  for (const auto& [other, other_key] : s->targets) {
    if (other == target || !IsMountPoint(other)) continue;
    if (IsSingleWriterKey(key) || IsSingleWriterKey(other_key)) {
      return Precondition("volume " + s->volume +
                          " is SINGLE_NODE_SINGLE_WRITER and already "
                          "published at " +
                          other);
    }
  }
  std::error_code ec;
  const std::string source = s->block ? s->loop : s->staging;
  if (s->block) {
    fs::create_directories(fs::path(target).parent_path(), ec);
    if (!fs::exists(target, ec)) {
      std::ofstream touch(target);
      if (!touch) return ToGrpc(Status::FromErrno(errno, "create " + target));
    }
  } else {
    fs::create_directories(target, ec);
    if (ec) return ToGrpc(Status::FromErrno(ec.value(), "create " + target));
  }
  if (Status st = Run({"mount", "--bind", source, target}); !st.ok()) return ToGrpc(st);
  if (read_only) {
    // A bind mount takes the read-only flag only on a remount.
    if (Status st = Run({"mount", "-o", "remount,bind,ro", target}); !st.ok()) {
      Unmount(target).IgnoreError();
      return ToGrpc(st);
    }
  }
  s->targets[target] = key;
  if (Status st = SaveState(options_, *s); !st.ok()) {
    Unmount(target).IgnoreError();
    return ToGrpc(st);
  }
  return grpc::Status::OK;
}

grpc::Status NodeService::NodeUnpublishVolume(grpc::ServerContext*,
                                              const v1::NodeUnpublishVolumeRequest* request,
                                              v1::NodeUnpublishVolumeResponse*) {
  if (grpc::Status st =
          RequireFields("NodeUnpublishVolume", {{"volume_id", !request->volume_id().empty()},
                                                {"target_path", !request->target_path().empty()}});
      !st.ok()) {
    return st;
  }
  std::lock_guard lock(mu_);
  const std::string target = request->target_path();
  if (Status st = Unmount(target); !st.ok()) return ToGrpc(st);
  std::error_code ec;
  fs::remove(target, ec);  // the plugin created it; an empty directory or a file
  if (std::optional<NodeState> s = LoadStaged(options_, request->volume_id());
      s && s->targets.erase(target) > 0) {
    if (Status st = SaveState(options_, *s); !st.ok()) return ToGrpc(st);
  }
  return grpc::Status::OK;
}

grpc::Status NodeService::NodeGetVolumeStats(grpc::ServerContext*,
                                             const v1::NodeGetVolumeStatsRequest* request,
                                             v1::NodeGetVolumeStatsResponse* response) {
  if (grpc::Status st =
          RequireFields("NodeGetVolumeStats", {{"volume_id", !request->volume_id().empty()},
                                               {"volume_path", !request->volume_path().empty()}});
      !st.ok()) {
    return st;
  }
  std::error_code ec;
  if (!fs::exists(request->volume_path(), ec)) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        "volume path " + request->volume_path() + " does not exist");
  }
  std::optional<NodeState> s = LoadStaged(options_, request->volume_id());
  if (!s) return NotStaged(request->volume_id());
  auto* condition = response->mutable_volume_condition();
  condition->set_abnormal(false);
  condition->set_message("volume is healthy");
  if (!IsMountPoint(request->volume_path())) {
    condition->set_abnormal(true);
    condition->set_message(request->volume_path() + " is not mounted");
  } else if (!AttachmentAlive(*s)) {
    condition->set_abnormal(true);
    condition->set_message("the attachment (" + std::string(AttachMethodName(s->method)) + ") of " +
                           s->volume + " is gone; restage it");
  }
  if (s->block) {
    auto size = BlockDeviceSize(s->loop);
    auto* u = response->add_usage();
    u->set_unit(v1::VolumeUsage::BYTES);
    u->set_total(size.ok() ? static_cast<int64_t>(*size) : 0);
    return grpc::Status::OK;
  }
  struct statvfs st {};
  if (statvfs(request->volume_path().c_str(), &st) != 0) {
    condition->set_abnormal(true);
    condition->set_message("statvfs " + request->volume_path() + ": " + std::strerror(errno));
    return grpc::Status::OK;
  }
  auto* bytes = response->add_usage();
  bytes->set_unit(v1::VolumeUsage::BYTES);
  bytes->set_total(static_cast<int64_t>(st.f_blocks * st.f_frsize));
  bytes->set_available(static_cast<int64_t>(st.f_bavail * st.f_frsize));
  bytes->set_used(static_cast<int64_t>((st.f_blocks - st.f_bfree) * st.f_frsize));
  auto* inodes = response->add_usage();
  inodes->set_unit(v1::VolumeUsage::INODES);
  inodes->set_total(static_cast<int64_t>(st.f_files));
  inodes->set_available(static_cast<int64_t>(st.f_favail));
  inodes->set_used(static_cast<int64_t>(st.f_files - st.f_ffree));
  return grpc::Status::OK;
}

grpc::Status NodeService::NodeExpandVolume(grpc::ServerContext*,
                                           const v1::NodeExpandVolumeRequest* request,
                                           v1::NodeExpandVolumeResponse* response) {
  if (grpc::Status st =
          RequireFields("NodeExpandVolume", {{"volume_id", !request->volume_id().empty()},
                                             {"volume_path", !request->volume_path().empty()}});
      !st.ok()) {
    return st;
  }
  std::lock_guard lock(mu_);
  std::optional<NodeState> s = LoadStaged(options_, request->volume_id());
  if (!s) return NotStaged(request->volume_id());
  auto info = engine_->GetVolume(s->volume);
  if (!info.ok()) return ToGrpc(info.status());
  uint64_t wanted = CsiCapacity(engine_, *info);
  const int64_t limit = request->capacity_range().limit_bytes();
  if (request->capacity_range().required_bytes() > 0) {
    wanted = std::max<uint64_t>(
        wanted,
        (static_cast<uint64_t>(request->capacity_range().required_bytes()) + kSizeGranularity - 1) /
            kSizeGranularity * kSizeGranularity);
  }
  if (limit > 0 && wanted > static_cast<uint64_t>(limit)) {
    return grpc::Status(grpc::StatusCode::OUT_OF_RANGE,
                        "volume " + s->volume + " has " + std::to_string(wanted) +
                            " bytes, more than limit_bytes " + std::to_string(limit));
  }
  // The attachment was sized when it connected: growth within the headroom is online; beyond
  // it the volume must be restaged (the new connection sees the new size).
  Result<uint64_t> attached_size = AttachedSize(*s);
  const uint64_t attached = attached_size.ok() ? *attached_size : 0;
  if (attached < wanted) {
    return Precondition("volume " + s->volume + " is attached with " + std::to_string(attached) +
                        " bytes, less than " + std::to_string(wanted) +
                        "; unstage and stage it again to use the new size");
  }
  auto loop_size = BlockDeviceSize(s->loop);
  if (!loop_size.ok()) return ToGrpc(loop_size.status());
  if (*loop_size < wanted) {
    if (Status st = SetLoopSizeLimit(s->loop, wanted); !st.ok()) return ToGrpc(st);
  }
  if (!s->block) {
    const std::vector<std::string> grow = s->fs_type == "xfs"
                                              ? std::vector<std::string>{"xfs_growfs", s->staging}
                                              : std::vector<std::string>{"resize2fs", s->loop};
    Result<ExecResult> r = Exec(grow, kMkfsTimeout);
    if (!r.ok()) return ToGrpc(r.status());
    if (r->exit_code != 0) {
      // The kernel grows a mounted ext4 only for CAP_SYS_RESOURCE (ext4_resize_begin): a node
      // plugin container without it cannot expand online. Say so instead of "internal".
      if ((r->out + r->err).find("Permission denied") != std::string::npos) {
        return Precondition("growing the mounted " + s->fs_type + " of " + s->volume +
                            " was refused (EPERM): shaled needs CAP_SYS_RESOURCE for online "
                            "resize; " +
                            r->Describe(grow[0]));
      }
      return ToGrpc(Status::Internal(r->Describe(grow[0])).WithContext("grow fs"));
    }
  }
  s->capacity = wanted;
  if (Status st = SaveState(options_, *s); !st.ok()) return ToGrpc(st);
  response->set_capacity_bytes(static_cast<int64_t>(wanted));
  return grpc::Status::OK;
}

grpc::Status NodeService::NodeGetCapabilities(grpc::ServerContext*,
                                              const v1::NodeGetCapabilitiesRequest*,
                                              v1::NodeGetCapabilitiesResponse* response) {
  using Rpc = v1::NodeServiceCapability::RPC;
  for (Rpc::Type t : {Rpc::STAGE_UNSTAGE_VOLUME, Rpc::GET_VOLUME_STATS, Rpc::EXPAND_VOLUME,
                      Rpc::VOLUME_CONDITION, Rpc::SINGLE_NODE_MULTI_WRITER}) {
    response->add_capabilities()->mutable_rpc()->set_type(t);
  }
  return grpc::Status::OK;
}

grpc::Status NodeService::NodeGetInfo(grpc::ServerContext*, const v1::NodeGetInfoRequest*,
                                      v1::NodeGetInfoResponse* response) {
  response->set_node_id(options_.node_id);
  response->set_max_volumes_per_node(options_.max_volumes_per_node);
  (*response->mutable_accessible_topology()->mutable_segments())[std::string(kTopologyKey)] =
      options_.node_id;
  return grpc::Status::OK;
}

}  // namespace shale::csi
