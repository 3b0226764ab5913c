#include "cli/replica_commands.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <thread>

#include "cli/output.h"
#include "cli/progress.h"
#include "engine/common/units.h"

namespace shale::cli {
namespace {

constexpr auto kWaitPoll = std::chrono::milliseconds(250);

std::string Progress(const v1::Replica& r) {
  if (r.rebuild_total_bytes() == 0) return "-";
  return FormatSize(r.rebuild_done_bytes()) + "/" + FormatSize(r.rebuild_total_bytes());
}

}  // namespace

std::string ReplicaTable(const v1::ListReplicasResponse& replicas) {
  Table table({"NODE", "STATE", "GENERATION", "REBUILD", "SENT", "ERROR"});
  for (const v1::Replica& r : replicas.replicas()) {
    table.AddRow({r.local() ? r.node() + " (target)" : r.node(), r.state(),
                  std::to_string(r.generation()), Progress(r),
                  r.rebuild_sent_bytes() == 0 ? "-" : FormatSize(r.rebuild_sent_bytes()),
                  r.last_error().empty() ? "-" : r.last_error()});
  }
  if (replicas.detached()) {
    return "detached (last target " + replicas.target() +
           "): no node serves this volume; `shale volume attach " + replicas.volume() +
           "` on a node holding an in-sync replica serves it there\n" + table.Render();
  }
  if (replicas.fenced()) {
    return "fenced: another node took this volume over (epoch " + std::to_string(replicas.epoch()) +
           ", target " + replicas.target() + "); this node serves no more I/O for it\n" +
           table.Render();
  }
  return table.Render();
}

nlohmann::ordered_json ToJson(const v1::ListReplicasResponse& replicas) {
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const v1::Replica& r : replicas.replicas()) {
    list.push_back({{"node", r.node()},
                    {"state", r.state()},
                    {"generation", r.generation()},
                    {"local", r.local()},
                    {"rebuild_done_bytes", r.rebuild_done_bytes()},
                    {"rebuild_total_bytes", r.rebuild_total_bytes()},
                    {"rebuild_sent_bytes", r.rebuild_sent_bytes()},
                    {"rebuilds", r.rebuilds()},
                    {"last_error", r.last_error()}});
  }
  nlohmann::ordered_json in_sync = nlohmann::ordered_json::array();
  for (const std::string& n : replicas.in_sync()) in_sync.push_back(n);
  return {{"volume", replicas.volume()},
          {"epoch", replicas.epoch()},
          {"target", replicas.target()},
          {"min_in_sync", replicas.min_in_sync()},
          {"in_sync", in_sync},
          {"fenced", replicas.fenced()},
          {"detached", replicas.detached()},
          {"node_selector", replicas.node_selector()},
          {"replicas", list}};
}

void ReplicaCommands::AddCommands(CLI::App& app) {
  CLI::App* replica_cmd =
      app.add_subcommand("replica", "Replicas of a replicated volume (ask its target's shaled)");
  replica_cmd->require_subcommand(1);
  CLI::App* list = replica_cmd->add_subcommand(
      "list",
      "Per replica: node, state (healthy, rebuilding, faulted, stale), generation, "
      "rebuild bytes done/total");
  list->add_option("NAME", name_, "Volume name")->required();
  list->callback(SelectAction(action_, this, &ReplicaCommands::RunList));
  CLI::App* wait = replica_cmd->add_subcommand(
      "wait", "Return once every replica is healthy (exit 1 at the timeout)");
  wait->add_option("NAME", name_, "Volume name")->required();
  wait->add_option("--timeout", timeout_s_, "Seconds to wait (default 600)")
      ->check(CLI::Range(0.0, 86400.0))
      ->type_name("S");
  wait->callback(SelectAction(action_, this, &ReplicaCommands::RunWait));
}

int ReplicaCommands::RunList(ControlClient& client, Format format) {
  v1::ListReplicasRequest req;
  req.set_volume(name_);
  return RunRpc(client, &v1::Control::Stub::ListReplicas, req, err_,
                [&](const v1::ListReplicasResponse& resp) {
                  if (format == Format::kJson) {
                    out_ << ToJson(resp).dump(2) << "\n";
                  } else {
                    out_ << ReplicaTable(resp);
                  }
                  return kExitOk;
                });
}

int ReplicaCommands::RunWait(ControlClient& client, Format format) {
  v1::ListReplicasRequest req;
  req.set_volume(name_);
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(timeout_s_ * 1000));
  const bool tty = &err_ == &std::cerr && isatty(STDERR_FILENO) == 1;
  // Rebuild bytes of the replicas being rebuilt drive the bar (or plain lines); the states of
  // the others are printed when they change (a faulted replica has no figures to show).
  ProgressMeter meter(err_, tty, "rebuilding '" + name_ + "'", ProgressMeter::Unit::kBytes);
  std::string shown_states;
  v1::ListReplicasResponse resp;
  while (true) {
    resp.Clear();
    const std::string error = client.Call(&v1::Control::Stub::ListReplicas, req, &resp);
    if (!error.empty()) {
      meter.Abandon();
      err_ << "shale: " << error << "\n";
      return kExitFailure;
    }
    std::string behind, states;
    uint64_t done = 0, total = 0;
    for (const v1::Replica& r : resp.replicas()) {
      if (r.state() == "healthy") continue;
      states += (states.empty() ? "" : ", ") + r.node() + " " + r.state();
      behind += (behind.empty() ? "" : ", ") + r.node() + " " + r.state();
      if (r.rebuild_total_bytes() > 0) behind += " " + Progress(r);
      if (r.state() == "rebuilding") {
        done += r.rebuild_done_bytes();
        total += r.rebuild_total_bytes();
      }
    }
    if (behind.empty()) break;
    if (std::chrono::steady_clock::now() >= deadline) {
      meter.Abandon();
      err_ << "shale: replica wait: volume '" << name_ << "' not healthy after " << timeout_s_
           << " s: " << behind << "\n";
      return kExitFailure;
    }
    if (total > 0) {
      meter.Update(std::min(done, total), total);
    } else if (states != shown_states) {
      meter.Abandon();
      err_ << "waiting for '" << name_ << "': " << states << "\n";
      shown_states = states;
    }
    std::this_thread::sleep_for(kWaitPoll);
  }
  meter.Finish();
  if (format == Format::kJson) {
    out_ << ToJson(resp).dump(2) << "\n";
  } else {
    out_ << "volume '" << name_ << "': every replica is healthy (epoch " << resp.epoch() << ")\n";
  }
  return kExitOk;
}

}  // namespace shale::cli
