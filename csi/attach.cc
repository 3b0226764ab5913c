#include "csi/attach.h"

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <fstream>

#include "csi/exec.h"

namespace shale::csi {

namespace fs = std::filesystem;

namespace {

// N of "nbdN"; nullopt for other names.
std::optional<int> NbdIndex(std::string_view name) {
  if (!name.starts_with("nbd") || name.size() == 3) return std::nullopt;
  int n = 0;
  const char* end = name.data() + name.size();
  auto [ptr, ec] = std::from_chars(name.data() + 3, end, n);
  if (ec != std::errc() || ptr != end || n < 0) return std::nullopt;
  return n;
}

}  // namespace

std::string_view AttachMethodName(AttachMethod method) {
  return method == AttachMethod::kKernelNbd ? "kernel-nbd" : "nbdfuse-loop";
}

std::optional<AttachMethod> ParseAttachMethod(std::string_view name) {
  if (name.empty() || name == "nbdfuse-loop") return AttachMethod::kNbdfuseLoop;
  if (name == "kernel-nbd") return AttachMethod::kKernelNbd;
  return std::nullopt;
}

KernelNbdProbe ProbeKernelNbd(const std::string& dev_root, const std::string& sys_root) {
  KernelNbdProbe probe;
  std::error_code ec;
  probe.dev_nbd0 = fs::exists(dev_root + "/nbd0", ec);
  probe.sys_nbd0 = fs::exists(sys_root + "/block/nbd0", ec);
  probe.nbd_client = FindTool("nbd-client");
  return probe;
}

AttachMethod ChooseAttachMethod(const KernelNbdProbe& probe) {
  return probe.dev_nbd0 && probe.sys_nbd0 && !probe.nbd_client.empty() ? AttachMethod::kKernelNbd
                                                                       : AttachMethod::kNbdfuseLoop;
}

std::vector<NbdDeviceState> ListNbdDevices(const std::string& sys_root) {
  std::vector<NbdDeviceState> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(sys_root + "/block", ec)) {
    const std::string name = entry.path().filename().string();
    if (!NbdIndex(name)) continue;
    std::error_code pid_ec;
    out.push_back({name, fs::exists(entry.path() / "pid", pid_ec)});
  }
  return out;
}

std::optional<std::string> PickFreeNbdDevice(const std::vector<NbdDeviceState>& devices) {
  std::optional<int> best;
  for (const NbdDeviceState& d : devices) {
    std::optional<int> n = NbdIndex(d.name);
    if (n && !d.connected && (!best || *n < *best)) best = n;
  }
  if (!best) return std::nullopt;
  return "/dev/nbd" + std::to_string(*best);
}

int NbdDevicePid(const std::string& device, const std::string& sys_root) {
  const std::string name = fs::path(device).filename().string();
  if (!NbdIndex(name)) return 0;
  std::ifstream in(sys_root + "/block/" + name + "/pid");
  int pid = 0;
  if (!(in >> pid) || pid < 0) return 0;
  return pid;
}

std::vector<std::string> NbdClientConnectArgv(const std::string& nbd_client,
                                              const NbdServerAddress& server,
                                              const std::string& export_name,
                                              const std::string& device, bool read_only) {
  std::vector<std::string> argv = {nbd_client};
  if (!server.unix_socket.empty()) {
    argv.insert(argv.end(), {"-unix", server.unix_socket, device, "-N", export_name});
  } else {
    argv.insert(argv.end(), {"-N", export_name, server.host, server.port, device});
  }
  // The engine refuses writes to read-only clones; the device must not even try (the kernel
  // would report I/O errors instead of EROFS).
  if (read_only) argv.push_back("-readonly");
  return argv;
}

std::vector<std::string> NbdClientDisconnectArgv(const std::string& nbd_client,
                                                 const std::string& device) {
  return {nbd_client, "-d", device};
}

}  // namespace shale::csi
