// How the node service makes a volume a block device (docs/csi.md, "Node: attach strategy"):
// the kernel nbd driver (nbd-client on the daemon's NBD socket) where the host has it, else
// nbdfuse + a loop device. The choice and the nbd-client command lines are pure functions over
// what ProbeKernelNbd / ListNbdDevices read from /dev and /sys (roots are parameters so that
// attach_test.cc can fake them): this machine class has no nbd module to try them on.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace shale::csi {

enum class AttachMethod {
  kNbdfuseLoop,  // nbdfuse exposes the export as a file, losetup makes it a block device
  kKernelNbd,    // nbd-client connects /dev/nbdN (a loop device on top limits it to the capacity)
};
// "nbdfuse-loop" / "kernel-nbd": the names in node state files.
std::string_view AttachMethodName(AttachMethod method);
// The method a state file names; "" (state files written before the field) is nbdfuse-loop.
std::optional<AttachMethod> ParseAttachMethod(std::string_view name);

// What the host offers for kernel NBD.
struct KernelNbdProbe {
  bool dev_nbd0 = false;   // /dev/nbd0 exists
  bool sys_nbd0 = false;   // /sys/block/nbd0 exists: the nbd driver is loaded (or built in) and
                           // registered it; a device node left in a container's /dev is not enough
  std::string nbd_client;  // path of nbd-client ("" when not installed)
};
KernelNbdProbe ProbeKernelNbd(const std::string& dev_root = "/dev",
                              const std::string& sys_root = "/sys");
// kKernelNbd when /dev/nbd0, its driver and nbd-client are all there, else kNbdfuseLoop.
AttachMethod ChooseAttachMethod(const KernelNbdProbe& probe);

// An nbd device and whether a client holds it (/sys/block/nbdN/pid exists while connected).
struct NbdDeviceState {
  std::string name;  // "nbd3"
  bool connected = false;
};
std::vector<NbdDeviceState> ListNbdDevices(const std::string& sys_root = "/sys");
// "/dev/nbdN" of the lowest-numbered device no client holds; nullopt when all are taken.
std::optional<std::string> PickFreeNbdDevice(const std::vector<NbdDeviceState>& devices);
// The pid the kernel records for the client of `device` ("/dev/nbdN"); 0 when none is connected.
int NbdDevicePid(const std::string& device, const std::string& sys_root = "/sys");

// Where nbd-client connects: the daemon's UNIX socket, else host and port.
struct NbdServerAddress {
  std::string unix_socket;
  std::string host;
  std::string port;
};
// nbd-client -unix SOCKET DEVICE -N EXPORT [-readonly]
// nbd-client -N EXPORT HOST PORT DEVICE [-readonly]
std::vector<std::string> NbdClientConnectArgv(const std::string& nbd_client,
                                              const NbdServerAddress& server,
                                              const std::string& export_name,
                                              const std::string& device, bool read_only);
// nbd-client -d DEVICE
std::vector<std::string> NbdClientDisconnectArgv(const std::string& nbd_client,
                                                 const std::string& device);

}  // namespace shale::csi
