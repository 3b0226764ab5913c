// Node service of csi.shale.io (docs/csi.md, "Node"): attach a volume as a block device
// (kernel nbd where the host has it, else nbdfuse, on the daemon's NBD UNIX socket; a loop
// device on top limits it to the CSI capacity), format it if blank, mount it at the
// staging path, bind-mount it to each target. Everything done is written to a small JSON state
// file per volume (<data-dir>/csi/node/<volume>.json, node_state.h) before the next step, so that
// unstaging after a daemon restart still knows what to undo.
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
#include <sstream>
#include <thread>

#include "csi/attach.h"
#include "csi/driver.h"
#include "csi/driver_internal.h"
#include "csi/exec.h"
#include "csi/node_state.h"
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

// The filesystem a mount capability asks for: its fs_type, else the volume context's fsType
// (the StorageClass parameter), else ext4; "" for block access.
std::string RequestedFsType(const v1::NodeStageVolumeRequest& request) {
  const auto& cap = request.volume_capability();
  if (cap.has_block()) return "";
  if (!cap.mount().fs_type().empty()) return cap.mount().fs_type();
  auto it = request.volume_context().find("fsType");
  return it != request.volume_context().end() && !it->second.empty() ? it->second : "ext4";
}

// The stage `existing` recorded for `volume`: OK for a retry of a complete one, ALREADY_EXISTS
// for another path or capability, nullopt after undoing a half-done one (crash, restart) so that
// the caller starts over.
std::optional<grpc::Status> ResumeStage(const DriverOptions& o, const std::string& volume,
                                        const NodeState& existing, const std::string& staging,
                                        bool block, const std::string& capability) {
  if (Canonical(existing.staging) != Canonical(staging)) {
    return grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                        "volume " + volume + " is staged at " + existing.staging);
  }
  if (existing.block != block ||
      (!existing.capability.empty() && existing.capability != capability)) {
    return grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                        "volume " + volume + " is staged at " + staging +
                            " with another capability (" + existing.capability + ")");
  }
  if (block || IsMountPoint(staging)) return grpc::Status::OK;  // already done
  if (Status st = Detach(existing); !st.ok()) return ToGrpc(st);
  RemoveState(o, volume);
  return std::nullopt;
}

// Undoes a failed stage as far as `s` records it (keeping the state file when the undo is
// incomplete, for unstage to finish) and returns `error`.
grpc::Status FailStage(const DriverOptions& o, const NodeState& s, const Status& error) {
  Status undone = Detach(s);
  if (!undone.ok()) {
    SHALE_LOG_WARN("csi: cleanup after a failed stage was incomplete", {"volume", s.volume},
                   {"error", undone.ToString()});
  } else {
    RemoveState(o, s.volume);
  }
  return ToGrpc(error);
}

// Records `s` after `step`: each step is saved before the next, so that a failure or a restart
// knows what to undo (docs/csi.md, "State files").
Status SaveStep(const DriverOptions& o, const NodeState& s, const std::string& step) {
  return SaveState(o, s).WithContext("save node state after " + step);
}

// Stage step 1, kernel nbd: connects s.volume with `nbd_client` to the first free /dev/nbdN and
// waits until it has `size` bytes; records the device, then the client pid, in `s` and its file.
Status AttachKernelNbd(const DriverOptions& o, const std::string& nbd_client, uint64_t size,
                       NodeState& s) {
  const auto deadline = std::chrono::steady_clock::now() + kAttachTimeout;
  std::optional<std::string> device = PickFreeNbdDevice(ListNbdDevices());
  if (!device) return Status::NoSpace("every /dev/nbdN is in use").WithContext("attach");
  s.nbd_device = *device;
  SHALE_RETURN_IF_ERROR(SaveStep(o, s, "picking the nbd device"));
  if (Status st = Run(NbdClientConnectArgv(nbd_client, {.unix_socket = o.nbd_socket}, s.volume,
                                           s.nbd_device, s.read_only));
      !st.ok()) {
    return st.WithContext("nbd-client");
  }
  // nbd-client returns once the device is configured; its pid (in sysfs while connected)
  // tells our connection from a later one on the same device.
  while ((s.pid = NbdDevicePid(s.nbd_device)) == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (s.pid == 0) {
    Run(NbdClientDisconnectArgv(nbd_client, s.nbd_device)).IgnoreError();
    return Status::Unavailable(s.nbd_device + " has no client after nbd-client")
        .WithContext("attach");
  }
  SHALE_RETURN_IF_ERROR(SaveStep(o, s, "nbd-client"));
  bool sized = false;
  while (!sized && std::chrono::steady_clock::now() < deadline) {
    auto dev_size = BlockDeviceSize(s.nbd_device);
    sized = dev_size.ok() && *dev_size == size;
    if (!sized) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (!sized) {
    return Status::Unavailable(s.nbd_device + " did not get the size of " + s.volume)
        .WithContext("attach");
  }
  return Status::Ok();
}

// Stage step 1, nbdfuse: serves s.volume as the file <attach_dir>/nbd and waits until it has
// `size` bytes; records the nbdfuse pid in `s` and its file.
Status AttachNbdfuse(const DriverOptions& o, uint64_t size, NodeState& s) {
  const auto deadline = std::chrono::steady_clock::now() + kAttachTimeout;
  const std::string pidfile = s.attach_dir + ".pid";
  std::error_code ec;
  fs::remove(pidfile, ec);
  std::vector<std::string> argv = {"nbdfuse"};
  if (s.read_only) argv.push_back("-r");
  argv.insert(argv.end(),
              {"-P", pidfile, s.attach_dir, "nbd+unix:///" + s.volume + "?socket=" + o.nbd_socket});
  Result<pid_t> pid = SpawnDetached(argv, s.attach_dir + ".log");
  if (!pid.ok()) return pid.status().WithContext("start nbdfuse");
  s.pid = *pid;
  SHALE_RETURN_IF_ERROR(SaveStep(o, s, "nbdfuse"));
  while (std::chrono::steady_clock::now() < deadline) {
    std::error_code size_ec;
    if (fs::exists(pidfile, size_ec) && fs::file_size(BackingFile(s), size_ec) == size) {
      return Status::Ok();
    }
    // Exited (waitpid: the child is ours; its cmdline is empty for a moment after the spawn).
    if (ReapIfExited(s.pid)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::ifstream log(s.attach_dir + ".log");
  std::string last, line;
  while (std::getline(log, line)) last = line;
  return Status::Unavailable("nbdfuse did not attach " + s.volume +
                             (last.empty() ? std::string() : ": " + last))
      .WithContext("attach");
}

// Stage step 2: a loop device over the attachment, limited to s.capacity (the engine volume has
// headroom for online expansion: docs/csi.md, "Expansion"); records it in `s` and its file.
Status AttachLoop(const DriverOptions& o, NodeState& s) {
  std::vector<std::string> losetup = {"losetup", "--find", "--show", "--sizelimit",
                                      std::to_string(s.capacity)};
  if (s.read_only) losetup.push_back("--read-only");
  losetup.push_back(BackingFile(s));
  Result<ExecResult> loop = Exec(losetup, kToolTimeout);
  if (!loop.ok()) return loop.status().WithContext("losetup");
  if (loop->exit_code != 0)
    return Status::Internal(loop->Describe("losetup")).WithContext("attach");
  s.loop = TrimRight(loop->out);
  return SaveStep(o, s, "losetup");
}

// Stage step 3: makes an s.fs_type filesystem on s.loop only when it is blank; an existing one
// (a clone's, a restaged volume's) is data and sets s.fs_type. FailedPrecondition for a type
// other than ext4/xfs, or a read-only volume without a filesystem.
Status FormatIfBlank(NodeState& s) {
  Result<std::string> existing_fs = ProbeFilesystem(s.loop);
  if (!existing_fs.ok()) return existing_fs.status().WithContext("probe filesystem");
  if (existing_fs->empty()) {
    if (s.read_only) {
      return Status::FailedPrecondition("read-only volume " + s.volume +
                                        " has no filesystem to mount")
          .WithContext("stage");
    }
    std::vector<std::string> mkfs =
        s.fs_type == "xfs"
            ? std::vector<std::string>{"mkfs.xfs", "-q", "-f", "-K", s.loop}
            : std::vector<std::string>{
                  "mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=1", s.loop};
    return Run(mkfs, kMkfsTimeout).WithContext("format");
  }
  if (*existing_fs != "ext4" && *existing_fs != "xfs") {
    return Status::FailedPrecondition("volume " + s.volume + " holds a " + *existing_fs +
                                      " filesystem; only ext4 and xfs are mounted")
        .WithContext("stage");
  }
  s.fs_type = *existing_fs;
  return Status::Ok();
}

// Stage step 4: mounts s.loop at s.staging with `cap`'s mount flags. Clones share their
// source's filesystem UUID: xfs must be told (nouuid). Read-only clones cannot replay a
// journal: skip it (noload / norecovery).
Status MountStaging(const NodeState& s, const v1::VolumeCapability& cap) {
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
  mount.insert(mount.end(), {s.loop, s.staging});
  return Run(mount).WithContext("mount");
}

}  // namespace

Status NodeService::DetachReplicated(const std::string& volume) {
  // nbdfuse's disconnect reaches the NBD server asynchronously: Busy until it has (bounded).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (;;) {
    Status st = options_.detach_volume ? options_.detach_volume(volume) : Status::Ok();
    if (st.code() != StatusCode::kBusy || std::chrono::steady_clock::now() >= deadline) return st;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

grpc::Status NodeService::ChangeGate() const {
  return options_.change_gate ? ToGrpc(options_.change_gate()) : grpc::Status::OK;
}

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
  if (grpc::Status gate = ChangeGate(); !gate.ok()) return gate;
  auto info = FindVolume(engine_, request->volume_id());
  if (!info.ok() && info.status().IsNotFound()) {
    // A read-only clone of a replicated volume's snapshot, made on another node: this node
    // makes its own from its copy of the snapshot (docs/csi.md, "Read-only clones on many
    // nodes").
    auto of = request->volume_context().find(std::string(kContextCloneOf));
    if (of != request->volume_context().end() && options_.create_clone_copy &&
        ValidateName("volume", request->volume_id()).ok()) {
      std::lock_guard lock(mu_);
      Status made = options_.create_clone_copy(request->volume_id(), of->second);
      if (!made.ok() && made.code() != StatusCode::kAlreadyExists) {
        return ToGrpc(made.WithContext("make this node's copy of read-only clone " +
                                       request->volume_id() + " of " + of->second));
      }
      info = FindVolume(engine_, request->volume_id());
    }
  }
  if (!info.ok() && info.status().IsNotFound() && options_.attach_volume &&
      ValidateName("volume", request->volume_id()).ok()) {
    // A replicated volume with no replica on this node: attaching it here makes its target
    // (served from the replicas elsewhere); a name that is no replicated volume stays NotFound.
    std::lock_guard lock(mu_);
    if (Status st = options_.attach_volume(request->volume_id()); !st.ok()) {
      return ToGrpc(st.WithContext("stage " + request->volume_id()));
    }
    info = FindVolume(engine_, request->volume_id());
  }
  if (!info.ok()) return ToGrpc(info.status());
  const auto& cap = request->volume_capability();
  if (grpc::Status st = CheckNodeCapability(cap, info->read_only); !st.ok()) return st;
  const bool block = cap.has_block();
  const std::string fs_type = RequestedFsType(*request);
  if (!block && fs_type != "ext4" && fs_type != "xfs") {
    return Invalid("fsType \"" + fs_type + "\" is not supported (ext4 or xfs)");
  }
  const std::string staging = request->staging_target_path();
  const std::string capability = CapabilityKey(cap, fs_type);

  std::lock_guard lock(mu_);
  // A replicated volume's target moves here first: the one writer, recorded in etcd (refused
  // while another live node has it staged).
  if (options_.attach_volume) {
    if (Status st = options_.attach_volume(info->name); !st.ok()) {
      return ToGrpc(st.WithContext("stage " + info->name));
    }
    info = FindVolume(engine_, request->volume_id());  // a volume grown while detached grew here
    if (!info.ok()) return ToGrpc(info.status());
  }
  if (std::optional<NodeState> existing = LoadState(options_, info->name)) {
    if (auto done = ResumeStage(options_, info->name, *existing, staging, block, capability))
      return *done;
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

  std::error_code ec;
  fs::create_directories(s.attach_dir, ec);
  if (ec) return ToGrpc(Status::FromErrno(ec.value(), "create " + s.attach_dir));
  if (!block) {
    fs::create_directories(staging, ec);
    if (ec) return ToGrpc(Status::FromErrno(ec.value(), "create " + staging));
  }
  if (Status st = SaveState(options_, s); !st.ok()) return ToGrpc(st);

  // 1. Attach the export: kernel nbd where the host has it, else nbdfuse (docs/csi.md).
  Status attached = s.method == AttachMethod::kKernelNbd
                        ? AttachKernelNbd(options_, probe.nbd_client, info->size_bytes, s)
                        : AttachNbdfuse(options_, info->size_bytes, s);
  if (!attached.ok()) return FailStage(options_, s, attached);
  // 2. A loop device over it; for block access that is all.
  if (Status st = AttachLoop(options_, s); !st.ok()) return FailStage(options_, s, st);
  if (block) return grpc::Status::OK;
  // 3. Format it if blank, 4. mount it at the staging path.
  if (Status st = FormatIfBlank(s); !st.ok()) return FailStage(options_, s, st);
  if (Status st = MountStaging(s, cap); !st.ok()) return FailStage(options_, s, st);
  if (Status st = SaveStep(options_, s, "mount"); !st.ok()) return FailStage(options_, s, st);
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
  if (options_.replica_nodes && !options_.replica_nodes(s->volume).empty()) {
    // A replicated volume: its target leaves this node (kept staged on failure: the CO retries).
    if (Status st = DetachReplicated(s->volume); !st.ok()) {
      return ToGrpc(st.WithContext("unstage " + s->volume));
    }
    RemoveState(options_, s->volume);
    SHALE_LOG_INFO("csi: volume unstaged", {"volume", s->volume});
    return grpc::Status::OK;
  }
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
  // This node's own copy of a read-only clone made at NodeStage goes with the staging (the
  // controller deletes only the clone it made; the next NodeStage here makes a new copy).
  if (auto info = engine_->GetVolume(s->volume);
      info.ok() && info->labels.contains(std::string(kLabelCloneCopy)) && options_.delete_volume) {
    if (Status deleted = options_.delete_volume(s->volume); !deleted.ok()) {
      SHALE_LOG_WARN("csi: this node's copy of a read-only clone not deleted",
                     {"volume", s->volume}, {"error", deleted.ToString()});
    }
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
  if (grpc::Status gate = ChangeGate(); !gate.ok()) return gate;
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
  if (grpc::Status gate = ChangeGate(); !gate.ok()) return gate;
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
