#include "daemon/ops/audit_interceptor.h"

#include <google/protobuf/message.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include <array>
#include <cctype>
#include <chrono>
#include <ctime>
#include <set>

#include "engine/common/log.h"

namespace shale::daemon::ops {
namespace {

using grpc::experimental::InterceptionHookPoints;

constexpr size_t kMaxRequestJsonBytes = 16 * 1024;
constexpr std::string_view kK8sPrefix = "csi.storage.k8s.io/";

std::string_view MethodName(std::string_view method) {
  const size_t slash = method.rfind('/');
  return slash == std::string_view::npos ? method : method.substr(slash + 1);
}

std::string CodeName(grpc::StatusCode code) {
  static constexpr std::array<std::string_view, 17> kNames = {"ok",
                                                              "cancelled",
                                                              "unknown",
                                                              "invalid_argument",
                                                              "deadline_exceeded",
                                                              "not_found",
                                                              "already_exists",
                                                              "permission_denied",
                                                              "resource_exhausted",
                                                              "failed_precondition",
                                                              "aborted",
                                                              "out_of_range",
                                                              "unimplemented",
                                                              "internal",
                                                              "unavailable",
                                                              "data_loss",
                                                              "unauthenticated"};
  const auto i = static_cast<size_t>(code);
  return i < kNames.size() ? std::string(kNames[i]) : "code_" + std::to_string(i);
}

// Whether a request field's name says it holds a secret (CSI "secrets", a PSK, a password...).
bool IsSecretKey(std::string_view key) {
  std::string lower(key);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (std::string_view word : {"secret", "password", "passwd", "credential", "token", "psk",
                                "private_key", "access_key", "session_key"}) {
    if (lower.find(word) != std::string::npos) return true;
  }
  return false;
}

// "https://user:pass@host/x" -> "https://<redacted>@host/x"; other strings unchanged.
std::string WithoutUserInfo(const std::string& value) {
  const size_t scheme = value.find("://");
  if (scheme == std::string::npos) return value;
  const size_t host = scheme + 3;
  const size_t end = value.find_first_of("/?#", host);
  const size_t at = value.rfind('@', end == std::string::npos ? value.size() : end);
  if (at == std::string::npos || at < host) return value;
  return value.substr(0, host) + "<redacted>" + value.substr(at);
}

std::string VolumeOf(std::string ref) {
  const size_t at = ref.find('@');
  return at == std::string::npos ? ref : ref.substr(0, at);
}

// Walks the request for the volumes and pool it names (see the header).
void CollectTargets(const nlohmann::json& j, std::string_view method,
                    std::set<std::string>* volumes, std::string* pool) {
  if (j.is_array()) {
    for (const auto& e : j) CollectTargets(e, method, volumes, pool);
    return;
  }
  if (!j.is_object()) return;
  const bool about_pool = method.find("Pool") != std::string_view::npos;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    if (it->is_string()) {
      const std::string value = it->get<std::string>();
      if (value.empty()) continue;
      if (key == "volume" || key == "volume_id" || key == "source_volume_id" ||
          key == "snapshot_id" || key == "source") {
        volumes->insert(VolumeOf(value));
      } else if (key == "pool") {
        *pool = value;
      } else if (key == "name") {
        if (about_pool) {
          *pool = value;
        } else if (method.find("Snapshot") != std::string_view::npos) {
          if (value.find('@') != std::string::npos) volumes->insert(VolumeOf(value));
        } else {
          volumes->insert(value);  // volume calls: CreateVolume, CloneVolume, SetVolumeQos, ...
        }
      }
    } else if (key != "parameters" && key != "labels" && key != "volume_context" &&
               key != "mutable_parameters" && key != "publish_context") {
      CollectTargets(*it, method, volumes, pool);
    }
  }
}

// Kubernetes names the sidecars pass (--extra-create-metadata, podInfoOnMount), or the labels
// the driver recorded on the volume when it was created.
void AddKubernetes(const nlohmann::json& request, const std::map<std::string, std::string>& labels,
                   nlohmann::json* record) {
  nlohmann::json k8s = nlohmann::json::object();
  auto take = [&](const nlohmann::json& map) {
    if (!map.is_object()) return;
    for (auto it = map.begin(); it != map.end(); ++it) {
      if (!it->is_string() || !std::string_view(it.key()).starts_with(kK8sPrefix)) continue;
      std::string name = it.key().substr(kK8sPrefix.size());  // "pvc/name", "pod.namespace"
      for (char& c : name) {
        if (c == '/' || c == '.') c = '_';
      }
      k8s[name] = it->get<std::string>();
    }
  };
  for (const char* field : {"parameters", "volume_context", "mutable_parameters"}) {
    if (request.contains(field)) take(request[field]);
  }
  for (const auto& [key, value] : labels) {
    if (!std::string_view(key).starts_with(kK8sPrefix)) continue;
    std::string name = key.substr(kK8sPrefix.size());
    for (char& c : name) {
      if (c == '/' || c == '.') c = '_';
    }
    if (!k8s.contains(name)) k8s[name] = value;
  }
  if (!k8s.empty()) (*record)["kubernetes"] = std::move(k8s);
}

class AuditInterceptor final : public grpc::experimental::Interceptor {
 public:
  AuditInterceptor(grpc::experimental::ServerRpcInfo* info, const std::string& source,
                   AuditLog* log, const PeerRegistry* peers, const VolumeLabelLookup& labels)
      : info_(info), source_(source), log_(log), peers_(peers), labels_(labels) {}
  ~AuditInterceptor() override {
    if (captured_ && !written_) {
      Write("abandoned", "the caller went away before the answer", nullptr);
    }
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE)) {
      Capture(methods->GetRecvMessage());
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS) && captured_ &&
        !written_) {
      const grpc::Status status = methods->GetSendStatus();
      Write(CodeName(status.error_code()), status.error_message(), methods);
    }
    methods->Proceed();
  }

 private:
  void Capture(void* message) {
    if (captured_ || message == nullptr) return;
    captured_ = true;
    // The request object the handler gets: a generated message, whose Message base is at its
    // start (single inheritance), so the cast from the type-erased pointer is exact.
    const auto* request = static_cast<const google::protobuf::Message*>(message);
    std::string json;
    google::protobuf::util::JsonPrintOptions options;
    options.preserve_proto_field_names = true;
    if (google::protobuf::util::MessageToJsonString(*request, &json, options).ok()) {
      request_ = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
    }
    if (request_.is_discarded() || !request_.is_object()) request_ = nlohmann::json::object();
    RedactSecrets(request_);
    AuditTargets targets = FindAuditTargets(request_, info_->method());
    volumes_ = std::move(targets.volumes);
    pool_ = std::move(targets.pool);
    if (labels_ && !volumes_.empty()) volume_labels_ = labels_(volumes_.front());
    if (const auto creds =
            peers_ != nullptr ? peers_->Lookup(info_->server_context()->peer()) : std::nullopt) {
      caller_ = {{"uid", creds->uid},
                 {"gid", creds->gid},
                 {"pid", creds->pid},
                 {"command", creds->command}};
    }
  }

  // Appends the record; `methods` (null when the call ended without a status sent) gets the
  // kAuditErrorMetadataKey trailer when the record could not be written.
  void Write(const std::string& result, const std::string& error,
             grpc::experimental::InterceptorBatchMethods* methods) {
    written_ = true;
    nlohmann::json record = NewAuditRecord(source_, MethodName(info_->method()));
    record["result"] = result;
    if (!error.empty()) record["error"] = error;
    record["caller"] = caller_;
    record["volumes"] = volumes_;
    if (!pool_.empty()) record["pool"] = pool_;
    AddKubernetes(request_, volume_labels_, &record);
    if (request_.dump().size() <= kMaxRequestJsonBytes) {
      record["request"] = request_;
    } else {
      record["request_truncated"] = true;
    }
    // The action has happened (or failed) by now: its answer goes out either way, with a trailer
    // the CLI turns into a warning. AuditLog::Append logged the record at ERROR, and the daemon's
    // change gate refuses further changes until the log can be written (fail closed).
    Status st = log_->Append(record);
    if (!st.ok() && methods != nullptr) {
      methods->GetSendTrailingMetadata()->emplace(std::string(kAuditErrorMetadataKey),
                                                  st.ToString());
    }
  }

  grpc::experimental::ServerRpcInfo* const info_;
  const std::string& source_;
  AuditLog* const log_;
  const PeerRegistry* const peers_;
  const VolumeLabelLookup& labels_;
  bool captured_ = false;
  bool written_ = false;
  nlohmann::json request_ = nlohmann::json::object();
  nlohmann::json caller_ = nullptr;
  std::vector<std::string> volumes_;
  std::string pool_;
  std::map<std::string, std::string> volume_labels_;
};

}  // namespace

void RedactSecrets(nlohmann::json& j) {
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (IsSecretKey(it.key())) {
        it.value() = "<redacted>";
      } else {
        RedactSecrets(it.value());
      }
    }
  } else if (j.is_array()) {
    for (auto& e : j) RedactSecrets(e);
  } else if (j.is_string()) {
    j = WithoutUserInfo(j.get<std::string>());
  }
}

AuditTargets FindAuditTargets(const nlohmann::json& request, std::string_view method) {
  std::set<std::string> volumes;
  AuditTargets out;
  CollectTargets(request, MethodName(method), &volumes, &out.pool);
  out.volumes.assign(volumes.begin(), volumes.end());
  return out;
}

bool IsAuditedMethod(std::string_view method) {
  const std::string_view name = MethodName(method);
  for (std::string_view prefix :
       {"Get", "List", "Probe", "Validate", "Check", "NodeGet", "ControllerGet"}) {
    if (name.starts_with(prefix)) return false;
  }
  return name != "VerifySnapshot";
}

grpc::experimental::Interceptor* AuditInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  if (log_ == nullptr || !IsAuditedMethod(info->method())) return nullptr;
  return new AuditInterceptor(info, source_, log_, peers_, labels_);
}

}  // namespace shale::daemon::ops
