// NbdExportGate: the NBD server as the lifecycle's ExportGate (daemon/lifecycle): `volume delete
// --force` closes a volume's export through it, and Busy errors name the NBD clients it has.
#pragma once

#include <string>

#include "daemon/lifecycle/volume_lifecycle.h"

namespace shale::nbd {
class NbdServer;
}

namespace shale::daemon {

class NbdExportGate final : public ExportGate {
 public:
  // `server` must outlive the gate.
  explicit NbdExportGate(nbd::NbdServer* server) : server_(server) {}

  Status WithExportClosed(const std::string& name, std::chrono::milliseconds timeout,
                          const std::function<Status()>& fn) override;
  // "2 connected NBD client(s): tcp 127.0.0.1:4000, unix pid 12" (at most 8 named).
  std::string DescribeClients(const std::string& name) const override;

 private:
  nbd::NbdServer* const server_;
};

}  // namespace shale::daemon
