#include "daemon/nbd_export_gate.h"

#include "nbd/server.h"

namespace shale::daemon {

Status NbdExportGate::WithExportClosed(const std::string& name, std::chrono::milliseconds timeout,
                                       const std::function<Status()>& fn) {
  return server_->WithExportClosed(name, timeout, fn);
}

std::string NbdExportGate::DescribeClients(const std::string& name) const {
  constexpr size_t kNamed = 8;
  std::string clients;
  size_t count = 0;
  for (const nbd::NbdClientInfo& c : server_->Clients()) {
    if (c.export_name != name) continue;
    if (++count <= kNamed) clients += (clients.empty() ? "" : ", ") + c.transport + " " + c.peer;
  }
  if (count == 0) return "";
  if (count > kNamed) clients += ", ...";
  return std::to_string(count) + " connected NBD client(s): " + clients;
}

}  // namespace shale::daemon
