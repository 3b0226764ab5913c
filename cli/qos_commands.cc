#include "cli/qos_commands.h"

#include <google/protobuf/descriptor.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <csignal>
#include <cstring>
#include <ctime>
#include <iostream>
#include <thread>

#include "cli/output.h"
#include "engine/common/units.h"

namespace shale::cli {

namespace {

using Kind = QosCommands::Kind;

// In API field order (v1::QosSettings); `flag` is what people type.
constexpr QosCommands::Flag kFlags[16] = {
    {"--iops", "iops", Kind::kCount, "Total IOPS limit (0 = unlimited)"},
    {"--read-iops", "read_iops", Kind::kCount, "Read IOPS limit"},
    {"--write-iops", "write_iops", Kind::kCount, "Write IOPS limit"},
    {"--bps", "bps", Kind::kBytes, "Total bandwidth limit, bytes/s (K, M, G suffixes)"},
    {"--read-bps", "read_bps", Kind::kBytes, "Read bandwidth limit, bytes/s"},
    {"--write-bps", "write_bps", Kind::kBytes, "Write bandwidth limit, bytes/s"},
    {"--burst-iops", "burst_iops", Kind::kCount,
     "Burst rate above --iops while credit lasts (0 = no burst)"},
    {"--burst-read-iops", "burst_read_iops", Kind::kCount, "Burst rate above --read-iops"},
    {"--burst-write-iops", "burst_write_iops", Kind::kCount, "Burst rate above --write-iops"},
    {"--burst-bps", "burst_bps", Kind::kBytes, "Burst rate above --bps, bytes/s"},
    {"--burst-read-bps", "burst_read_bps", Kind::kBytes, "Burst rate above --read-bps"},
    {"--burst-write-bps", "burst_write_bps", Kind::kBytes, "Burst rate above --write-bps"},
    {"--burst-seconds", "burst_seconds", Kind::kSeconds,
     "Seconds a full credit sustains the burst rate (default 1)"},
    {"--iops-unit", "iops_unit", Kind::kUnit,
     "Bytes one counted operation covers; larger requests count as several (default 4K)"},
    {"--weight", "weight", Kind::kWeight, "Share under contention, 1..10000 (default 100)"},
    {"--reservation-iops", "reservation_iops", Kind::kCount,
     "IOPS guaranteed under contention (0 = none)"},
};

constexpr int64_t kMaxWeight = 10'000;

const char* TypeName(Kind kind) {
  switch (kind) {
    case Kind::kCount:
      return "N";
    case Kind::kBytes:
      return "BYTES/S";
    case Kind::kSeconds:
      return "SECONDS";
    case Kind::kWeight:
      return "W";
    case Kind::kUnit:
      return "SIZE";
  }
  return "N";
}

// A whole number >= 0 (no sign, no suffix), up to INT64_MAX.
bool ParseCount(std::string_view text, int64_t* out) {
  if (text.empty()) return false;
  uint64_t v = 0;
  for (char c : text) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
    const uint64_t digit = static_cast<uint64_t>(c - '0');
    if (v > (static_cast<uint64_t>(INT64_MAX) - digit) / 10) return false;
    v = v * 10 + digit;
  }
  *out = static_cast<int64_t>(v);
  return true;
}

// Parses one flag's text into the value the API takes; false with `error`.
bool ParseFlag(const QosCommands::Flag& f, const std::string& text, int64_t* out,
               std::string* error) {
  const std::string flag = f.flag;
  switch (f.kind) {
    case Kind::kCount:
      if (ParseCount(text, out)) return true;
      *error = flag + " '" + text + "': expected a whole number >= 0 (0 = " +
               (std::string(f.field).starts_with("burst_")   ? "no burst"
                : std::string(f.field) == "reservation_iops" ? "none"
                                                             : "unlimited") +
               ")";
      return false;
    case Kind::kSeconds: {
      std::string_view t = text;
      if (t.ends_with('s')) t.remove_suffix(1);
      if (ParseCount(t, out)) return true;
      *error = flag + " '" + text + "': expected whole seconds >= 0 (e.g. 10 or 10s)";
      return false;
    }
    case Kind::kWeight:
      if (ParseCount(text, out) && *out >= 1 && *out <= kMaxWeight) return true;
      *error = flag + " '" + text + "': expected a weight between 1 and " +
               std::to_string(kMaxWeight) + " (the default is 100)";
      return false;
    case Kind::kBytes:
    case Kind::kUnit: {
      Result<uint64_t> v = ParseSize(text);
      if (!v.ok()) {
        *error = flag + ": " + std::string(v.status().message());
        return false;
      }
      if (*v > static_cast<uint64_t>(INT64_MAX)) {
        *error = flag + " '" + text + "' is too large";
        return false;
      }
      *out = static_cast<int64_t>(*v);
      return true;
    }
  }
  return false;
}

bool AnyBurst(const v1::QosSettings& s) {
  return s.burst_iops() || s.burst_read_iops() || s.burst_write_iops() || s.burst_bps() ||
         s.burst_read_bps() || s.burst_write_bps();
}

// "1s", "500ms", "2" (seconds), "0.5s" -> milliseconds; false if malformed.
bool ParseInterval(std::string_view text, uint64_t* ms) {
  double scale = 1000;  // seconds by default
  if (text.ends_with("ms")) {
    text.remove_suffix(2);
    scale = 1;
  } else if (text.ends_with('s')) {
    text.remove_suffix(1);
  }
  if (text.empty()) return false;
  char* end = nullptr;
  const std::string s(text);
  const double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || !(v >= 0) || v > 1e9) return false;
  *ms = static_cast<uint64_t>(v * scale + 0.5);
  return true;
}

// Set by SIGINT / SIGTERM while `volume stats --watch` runs.
volatile std::sig_atomic_t g_stop_watch = 0;
extern "C" void OnWatchSignal(int /*signo*/) { g_stop_watch = 1; }

// Installs the watch's signal handlers for its lifetime and restores the previous ones.
class WatchSignals {
 public:
  WatchSignals() {
    g_stop_watch = 0;
    struct sigaction sa;
    std::memset(&sa, 0, sizeof(sa));
    sa.sa_handler = OnWatchSignal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int_);
    sigaction(SIGTERM, &sa, &old_term_);
  }
  ~WatchSignals() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }
  WatchSignals(const WatchSignals&) = delete;
  WatchSignals& operator=(const WatchSignals&) = delete;

  bool stopped() const { return g_stop_watch != 0; }
  // Sleeps until `deadline` or a stop signal, in short slices so a signal ends it promptly.
  void SleepUntil(std::chrono::steady_clock::time_point deadline) const {
    while (!stopped()) {
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) return;
      std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(
          deadline - now, std::chrono::milliseconds(20)));
    }
  }

 private:
  struct sigaction old_int_ {};
  struct sigaction old_term_ {};
};

}  // namespace

void QosCommands::AddQosCommand(CLI::App& app) {
  Action* action = action_;
  auto print_json = [this](const nlohmann::ordered_json& json) { out_ << json.dump(2) << "\n"; };

  CLI::App* qos_cmd = app.add_subcommand(
      "qos", "Per-volume QoS: IOPS/bandwidth limits with bursts, weight and reservation");
  qos_cmd->require_subcommand(1);

  CLI::App* set = qos_cmd->add_subcommand(
      "set",
      "Change a volume's QoS live (only the given fields; 0 = unlimited); takes effect at once");
  set->add_option("VOLUME", volume_, "Volume name")->required();
  AddSettingsFlags(set, &set_flags_);
  set->add_flag("--clear", clear_,
                "Start from no limits and default weight (then apply the other flags)");
  set->callback([this, action] {
    *action = [this](ControlClient& client, Format format) { return RunSet(client, format); };
  });

  CLI::App* show = qos_cmd->add_subcommand("show", "Show a volume's QoS settings");
  show->add_option("VOLUME", volume_, "Volume name")->required();
  show->callback([this, action, print_json] {
    *action = [this, print_json](ControlClient& client, Format format) {
      v1::GetVolumeQosRequest req;
      req.set_name(volume_);
      return RunRpc(
          client, &v1::Control::Stub::GetVolumeQos, req, err_, [&](const v1::VolumeQos& resp) {
            format == Format::kJson ? print_json(ToJson(resp)) : void(out_ << QosView(resp));
            return kExitOk;
          });
    };
  });

  CLI::App* budget = qos_cmd->add_subcommand(
      "pool-budget",
      "Show or set a pool's scheduler budget: requests dispatched at once before volumes are "
      "served by reservation and weight (default 32)");
  budget->add_option("POOL", pool_, "Pool name")->required();
  budget->add_option("BUDGET", budget_, "New budget, 1..4096 (omit to show)")->type_name("N");
  budget->callback([this, action, print_json] {
    *action = [this, print_json](ControlClient& client, Format format) {
      auto print = [&](const v1::PoolQos& resp) {
        format == Format::kJson ? print_json(ToJson(resp)) : void(out_ << PoolQosView(resp));
        return kExitOk;
      };
      if (budget_.empty()) {
        v1::GetPoolQosRequest req;
        req.set_pool(pool_);
        return RunRpc(client, &v1::Control::Stub::GetPoolQos, req, err_, print);
      }
      int64_t n = 0;
      if (!ParseCount(budget_, &n) || n < 1 || n > 4096) {
        err_ << "shale: qos pool-budget: BUDGET '" << budget_
             << "': expected a whole number between 1 and 4096\n";
        return kExitUsage;
      }
      v1::SetPoolQosRequest req;
      req.set_pool(pool_);
      req.set_budget(static_cast<uint32_t>(n));
      return RunRpc(client, &v1::Control::Stub::SetPoolQos, req, err_, print);
    };
  });
  AddRebuildCommand(qos_cmd);
}

void QosCommands::AddRebuildCommand(CLI::App* qos_cmd) {
  Action* action = action_;
  CLI::App* rebuild = qos_cmd->add_subcommand(
      "rebuild-bps",
      "Show or set this node's cap on replica rebuilds (bytes per second each; 0 = none), live "
      "for the rebuilds running and those to come (cluster mode)");
  rebuild->add_option("BPS", rebuild_bps_, "New cap, e.g. 64M (0 or none: no cap; omit to show)")
      ->type_name("RATE");
  rebuild->callback([this, action] {
    *action = [this](ControlClient& client, Format format) {
      auto print = [&](const v1::RebuildQos& resp) {
        format == Format::kJson ? void(out_ << ToJson(resp).dump(2) << "\n")
                                : void(out_ << RebuildQosView(resp));
        return kExitOk;
      };
      if (rebuild_bps_.empty()) {
        return RunRpc(client, &v1::Control::Stub::GetRebuildQos, v1::GetRebuildQosRequest(), err_,
                      print);
      }
      v1::SetRebuildQosRequest req;
      if (rebuild_bps_ != "none") {
        Result<uint64_t> bps = ParseSize(rebuild_bps_);
        if (!bps.ok()) {
          err_ << "shale: qos rebuild-bps: RATE '" << rebuild_bps_
               << "': expected bytes per second such as 64M, or 0 / none for no cap ("
               << bps.status().message() << ")\n";
          return kExitUsage;
        }
        req.set_rebuild_bps(*bps);
      }
      return RunRpc(client, &v1::Control::Stub::SetRebuildQos, req, err_, print);
    };
  });
}

void QosCommands::AddVolumeCommands(CLI::App* volume_cmd) {
  Action* action = action_;
  CLI::App* stats = volume_cmd->add_subcommand(
      "stats", "Live I/O of a volume through QoS: rates, tokens left, throttling, queues");
  stats->add_option("NAME", volume_, "Volume name")->required();
  stats->add_flag("--watch", watch_, "Redraw every --interval until Ctrl-C (JSON: one line each)");
  stats->add_option("--interval", interval_, "Time between samples with --watch (e.g. 1s, 500ms)")
      ->type_name("DURATION")
      ->capture_default_str();
  stats->add_option("--count", count_, "Stop after N samples (implies --watch)")
      ->check(CLI::Range(1u, 1'000'000u))
      ->type_name("N");
  stats->callback([this, action] {
    *action = [this](ControlClient& client, Format format) { return RunStats(client, format); };
  });
}

void QosCommands::AddSettingsFlags(CLI::App* cmd, FlagValues* values) {
  for (size_t i = 0; i < std::size(kFlags); ++i) {
    values->option[i] = cmd->add_option(kFlags[i].flag, values->text[i], kFlags[i].help)
                            ->type_name(TypeName(kFlags[i].kind))
                            ->group("QoS");
  }
}

void QosCommands::AddCreateFlags(CLI::App* volume_create) {
  AddSettingsFlags(volume_create, &create_flags_);
}

bool QosCommands::AnyGiven(const FlagValues& values) {
  for (const CLI::Option* o : values.option) {
    if (o != nullptr && o->count() > 0) return true;
  }
  return false;
}

bool QosCommands::Apply(const FlagValues& values, v1::QosSettings* settings, std::string* error) {
  const google::protobuf::Descriptor* d = v1::QosSettings::descriptor();
  const google::protobuf::Reflection* r = settings->GetReflection();
  for (size_t i = 0; i < std::size(kFlags); ++i) {
    if (values.option[i] == nullptr || values.option[i]->count() == 0) continue;
    int64_t v = 0;
    if (!ParseFlag(kFlags[i], values.text[i], &v, error)) return false;
    const google::protobuf::FieldDescriptor* fd = d->FindFieldByName(kFlags[i].field);
    if (fd == nullptr) {
      *error = std::string("internal: no QoS field ") + kFlags[i].field;
      return false;
    }
    r->SetInt64(settings, fd, v);
  }
  return true;
}

bool QosCommands::FillCreate(v1::CreateVolumeRequest* req, std::string* error) {
  if (!AnyGiven(create_flags_)) return true;
  return Apply(create_flags_, req->mutable_qos(), error);
}

int QosCommands::RunSet(ControlClient& client, Format format) {
  if (!clear_ && !AnyGiven(set_flags_)) {
    err_ << "shale: qos set: nothing to change; give at least one of --iops, --bps, "
            "--burst-iops, --weight, --reservation-iops, ... or --clear (see 'shale qos set "
            "--help')\n";
    return kExitUsage;
  }
  v1::QosSettings settings;
  std::string error;
  // Parse before asking shaled, so a typo costs no round trip.
  if (!Apply(set_flags_, &settings, &error)) {
    err_ << "shale: qos set: " << error << "\n";
    return kExitUsage;
  }
  // Only the given fields change: start from what is in force (unless --clear).
  if (!clear_) {
    v1::GetVolumeQosRequest get;
    get.set_name(volume_);
    v1::VolumeQos current;
    error = client.Call(&v1::Control::Stub::GetVolumeQos, get, &current);
    if (!error.empty()) {
      err_ << "shale: " << error << "\n";
      return kExitFailure;
    }
    settings = current.qos();
    Apply(set_flags_, &settings, &error);  // parsed above: cannot fail
  }
  // The burst length goes with the last burst rate, unless it was given explicitly.
  const size_t burst_seconds_index = 12;
  if (!AnyBurst(settings) && set_flags_.option[burst_seconds_index]->count() == 0) {
    settings.set_burst_seconds(0);
  }
  v1::SetVolumeQosRequest req;
  req.set_name(volume_);
  *req.mutable_qos() = settings;
  return RunRpc(client, &v1::Control::Stub::SetVolumeQos, req, err_,
                [&](const v1::VolumeQos& resp) {
                  if (format == Format::kJson) {
                    out_ << ToJson(resp).dump(2) << "\n";
                  } else {
                    out_ << QosView(resp);
                  }
                  return kExitOk;
                });
}

int QosCommands::RunStats(ControlClient& client, Format format) {
  uint64_t interval_ms = 0;
  if (!ParseInterval(interval_, &interval_ms) || interval_ms < 100 || interval_ms > 3'600'000) {
    err_ << "shale: volume stats: --interval '" << interval_
         << "': expected a duration between 100ms and 1h (e.g. 1s, 500ms)\n";
    return kExitUsage;
  }
  const bool watch = watch_ || count_ > 0;
  v1::GetVolumeStatsRequest req;
  req.set_name(volume_);
  if (!watch) {
    return RunRpc(client, &v1::Control::Stub::GetVolumeStats, req, err_,
                  [&](const v1::VolumeIoStats& resp) {
                    if (format == Format::kJson) {
                      out_ << ToJson(resp).dump(2) << "\n";
                    } else {
                      out_ << VolumeStatsView(resp);
                    }
                    return kExitOk;
                  });
  }
  // Redraw in place only on a terminal; elsewhere (a pipe, a file, a test) samples follow each
  // other: JSON one object per line, tables separated by a time stamp line.
  const bool redraw = &out_ == &std::cout && isatty(STDOUT_FILENO) == 1;
  WatchSignals signals;
  auto next = std::chrono::steady_clock::now();
  for (unsigned n = 0; !signals.stopped() && (count_ == 0 || n < count_); ++n) {
    if (n > 0) {
      next += std::chrono::milliseconds(interval_ms);
      signals.SleepUntil(next);
      if (signals.stopped()) break;
    }
    v1::VolumeIoStats resp;
    const std::string error = client.Call(&v1::Control::Stub::GetVolumeStats, req, &resp);
    if (!error.empty()) {
      err_ << "shale: " << error << "\n";
      return kExitFailure;
    }
    if (format == Format::kJson) {
      out_ << ToJson(resp).dump() << std::endl;  // flushed: a reader follows it live
    } else {
      if (redraw) out_ << "\033[H\033[2J";
      out_ << (redraw ? "" : (n > 0 ? "\n" : "")) << FormatUnixNanos(resp.time_unix_ns())
           << (redraw ? "  (every " + interval_ + "; Ctrl-C to stop)" : "") << "\n"
           << VolumeStatsView(resp) << std::flush;
    }
  }
  return kExitOk;
}

}  // namespace shale::cli
