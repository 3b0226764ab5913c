// State files of the node service: NodeState as JSON, written with write-fsync-rename
// (node_state.h; docs/csi.md, "State files").
#include "csi/node_state.h"

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "csi/driver.h"
#include "engine/common/units.h"

namespace shale::csi {

namespace fs = std::filesystem;

namespace {

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

std::string StateDir(const DriverOptions& o) { return o.data_dir + "/csi/node"; }
std::string StatePath(const DriverOptions& o, const std::string& volume) {
  return StateDir(o) + "/" + volume + ".json";
}

}  // namespace

// POSIX read: iostreams' buffer iterators trip -Wnull-dereference in libstdc++ 12.
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

std::string AttachDir(const DriverOptions& o, const std::string& volume) {
  return o.data_dir + "/csi/attach/" + volume;
}

std::optional<NodeState> LoadState(const DriverOptions& o, const std::string& volume) {
  const std::string text = ReadSmallFile(StatePath(o, volume));
  if (text.empty()) return std::nullopt;
  return FromJson(nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false));
}

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

std::optional<NodeState> LoadStaged(const DriverOptions& o, const std::string& id) {
  if (!ValidateName("volume", id).ok()) return std::nullopt;
  return LoadState(o, id);
}

}  // namespace shale::csi
