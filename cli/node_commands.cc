#include "cli/node_commands.h"

#include <chrono>
#include <map>
#include <thread>

#include "cli/output.h"
#include "engine/common/labels.h"
#include "engine/common/units.h"

namespace shale::cli {

namespace {
constexpr auto kDrainPoll = std::chrono::milliseconds(500);

// "disk=ssd,zone=b" (sorted by key), "-" when none.
std::string LabelText(const google::protobuf::Map<std::string, std::string>& labels) {
  const std::map<std::string, std::string> sorted(labels.begin(), labels.end());
  std::string out;
  for (const auto& [key, value] : sorted) out += (out.empty() ? "" : ",") + key + "=" + value;
  return out.empty() ? std::string("-") : out;
}

nlohmann::ordered_json LabelJson(const google::protobuf::Map<std::string, std::string>& labels) {
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  for (const auto& [key, value] :
       std::map<std::string, std::string>(labels.begin(), labels.end())) {
    out[key] = value;
  }
  return out;
}
}  // namespace

std::string NodeTable(const v1::ListNodesResponse& nodes) {
  Table table(
      {"NAME", "STATE", "REPLICA ADDRESS", "FREE", "POOLS", "TARGETS", "REPLICAS", "LABELS"});
  auto names = [](const google::protobuf::RepeatedPtrField<std::string>& list) {
    std::string out;
    for (const std::string& v : list) out += (out.empty() ? "" : ",") + v;
    return out.empty() ? std::string("-") : out;
  };
  for (const v1::Node& n : nodes.nodes()) {
    const std::string name = n.local() ? n.name() + " (this node)" : n.name();
    if (!n.error().empty()) {
      table.AddRow({name, n.state(), "-", "-", "malformed record: " + n.error(), "-", "-", "-"});
      continue;
    }
    std::string pools;
    for (const v1::NodePool& p : n.pools()) {
      if (!pools.empty()) pools += ", ";
      pools += p.name() + " " + FormatSize(p.free_bytes()) + "/" + FormatSize(p.capacity_bytes());
    }
    const std::string state = n.draining()   ? n.state() + ", draining"
                              : n.cordoned() ? n.state() + ", cordoned"
                                             : n.state();
    table.AddRow({name, state, n.replica_address().empty() ? "-" : n.replica_address(),
                  FormatSize(n.free_bytes()), pools.empty() ? "-" : pools, names(n.targets()),
                  names(n.replicas()), LabelText(n.labels())});
  }
  return table.Render();
}

nlohmann::ordered_json ToJson(const v1::ListNodesResponse& nodes) {
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const v1::Node& n : nodes.nodes()) {
    nlohmann::ordered_json pools = nlohmann::ordered_json::array();
    for (const v1::NodePool& p : n.pools()) {
      pools.push_back({{"name", p.name()},
                       {"free_bytes", p.free_bytes()},
                       {"capacity_bytes", p.capacity_bytes()}});
    }
    nlohmann::ordered_json targets = nlohmann::ordered_json::array();
    for (const std::string& v : n.targets()) targets.push_back(v);
    nlohmann::ordered_json replicas = nlohmann::ordered_json::array();
    for (const std::string& v : n.replicas()) replicas.push_back(v);
    nlohmann::ordered_json node = {
        {"name", n.name()},
        {"state", n.state()},
        {"cordoned", n.cordoned()},
        {"draining", n.draining()},
        {"replica_address", n.replica_address()},
        {"free_bytes", n.free_bytes()},
        {"local", n.local()},
        {"pools", pools},
        {"targets", targets},
        {"replicas", replicas},
        {"labels", LabelJson(n.labels())},
    };
    if (!n.error().empty()) node["error"] = n.error();
    list.push_back(std::move(node));
  }
  return {{"nodes", list}};
}

void NodeCommands::AddCommands(CLI::App& app) {
  CLI::App* node_cmd =
      app.add_subcommand("node", "Nodes of the cluster (shaled started with --cluster-store)");
  node_cmd->require_subcommand(1);
  CLI::App* list = node_cmd->add_subcommand(
      "list",
      "List every node registered in etcd: replica address, state (up while its lease "
      "lives), pools' free bytes, the replicated volumes it serves (targets) and holds "
      "(replicas)");
  list->callback(SelectAction(action_, this, &NodeCommands::RunList));
  CLI::App* cordon = node_cmd->add_subcommand(
      "cordon",
      "Keep new replicas off a node (placement skips it; the replicas it holds and the volumes "
      "it serves stay); persisted in etcd until `node uncordon`");
  cordon->add_option("NAME", name_, "Node name")->required();
  cordon->callback(SelectAction(action_, this, &NodeCommands::RunCordon));
  CLI::App* uncordon =
      node_cmd->add_subcommand("uncordon", "Let new replicas go to a cordoned node again");
  uncordon->add_option("NAME", name_, "Node name")->required();
  uncordon->callback(SelectAction(action_, this, &NodeCommands::RunUncordon));
  CLI::App* drain = node_cmd->add_subcommand(
      "drain",
      "Move every replica off a node: it is cordoned, and the target of each volume with a "
      "replica there places a new one elsewhere, rebuilds it, then removes the old one (a volume "
      "served on the node goes on being served there, from the other replicas); waits until the "
      "node holds none (exit 1 at the timeout; `node uncordon` ends the drain)");
  drain->add_option("NAME", name_, "Node name")->required();
  drain->add_option("--timeout", timeout_s_, "Seconds to wait (default 3600)")
      ->check(CLI::Range(0.0, 604800.0))
      ->type_name("S");
  drain->add_flag("--no-wait", no_wait_, "Start the drain and print what is left; do not wait");
  drain->callback(SelectAction(action_, this, &NodeCommands::RunDrain));
  CLI::App* forget = node_cmd->add_subcommand(
      "forget",
      "Remove a node that is gone for good from the node list (refused while it is up or holds "
      "replicas)");
  forget->add_option("NAME", name_, "Node name")->required();
  forget->callback(SelectAction(action_, this, &NodeCommands::RunForget));
  CLI::App* label = node_cmd->add_subcommand(
      "label",
      "Set (KEY=VALUE) or remove (KEY-) labels of a node, which replica node selectors match "
      "(`volume create --replica-node-selector`, StorageClass replicaNodeSelector); kept in etcd. "
      "Without changes: prints the node's labels");
  label->add_option("NAME", name_, "Node name")->required();
  label->add_option("CHANGES", label_changes_, "KEY=VALUE to set, KEY- to remove")
      ->type_name("KEY=VALUE|KEY-");
  label->callback(SelectAction(action_, this, &NodeCommands::RunLabel));
}

int NodeCommands::RunLabel(ControlClient& client, Format format) {
  v1::LabelNodeRequest req;
  req.set_node(name_);
  for (const std::string& change : label_changes_) {
    if (change.find('=') == std::string::npos && !change.empty() && change.back() == '-') {
      const std::string key = change.substr(0, change.size() - 1);
      if (Status st = ValidateLabel(key, ""); !st.ok()) {
        err_ << "shale: node label: " << st.message() << "\n";
        return kExitUsage;
      }
      req.add_remove(key);
      continue;
    }
    Result<std::pair<std::string, std::string>> parsed = ParseLabel(change);
    if (!parsed.ok()) {
      err_ << "shale: node label: '" << change << "': " << parsed.status().message()
           << " (KEY=VALUE to set, KEY- to remove)\n";
      return kExitUsage;
    }
    (*req.mutable_set())[parsed->first] = parsed->second;
  }
  return RunRpc(
      client, &v1::Control::Stub::LabelNode, req, err_, [&](const v1::LabelNodeResponse& resp) {
        if (format == Format::kJson) {
          out_ << nlohmann::ordered_json{{"node", name_}, {"labels", LabelJson(resp.labels())}}
                      .dump(2)
               << "\n";
        } else {
          out_ << "node " << name_ << " labels: " << LabelText(resp.labels()) << "\n";
        }
        return kExitOk;
      });
}

int NodeCommands::RunForget(ControlClient& client, Format format) {
  v1::ForgetNodeRequest req;
  req.set_node(name_);
  return RunRpc(
      client, &v1::Control::Stub::ForgetNode, req, err_, [&](const v1::ForgetNodeResponse& resp) {
        format == Format::kJson ? void(out_ << nlohmann::ordered_json{{"node", name_},
                                                                      {"forgotten", true},
                                                                      {"message", resp.message()}}
                                                   .dump(2)
                                            << "\n")
                                : void(out_ << resp.message() << "\n");
        return kExitOk;
      });
}

int NodeCommands::RunDrain(ControlClient& client, Format format) {
  v1::DrainNodeRequest req;
  req.set_node(name_);
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(timeout_s_ * 1000));
  std::map<std::string, std::string> shown;  // volume -> why, as last printed
  v1::DrainNodeResponse resp;
  while (true) {
    resp.Clear();
    const std::string error = client.Call(&v1::Control::Stub::DrainNode, req, &resp);
    if (!error.empty()) {
      err_ << "shale: " << error << "\n";
      return kExitFailure;
    }
    if (resp.drained() || no_wait_) break;
    if (std::chrono::steady_clock::now() >= deadline) {
      err_ << "shale: node drain: node '" << name_ << "' not drained after " << timeout_s_
           << " s:\n";
      for (const v1::DrainRemaining& r : resp.remaining()) {
        err_ << "  " << r.volume() << ": " << r.why() << "\n";
      }
      return kExitFailure;
    }
    for (const v1::DrainRemaining& r : resp.remaining()) {  // progress: what changed
      if (shown[r.volume()] != r.why()) err_ << r.volume() << ": " << r.why() << "\n";
      shown[r.volume()] = r.why();
    }
    std::this_thread::sleep_for(kDrainPoll);
  }
  if (format == Format::kJson) {
    nlohmann::ordered_json left = nlohmann::ordered_json::array();
    for (const v1::DrainRemaining& r : resp.remaining()) {
      left.push_back({{"volume", r.volume()}, {"why", r.why()}});
    }
    out_ << nlohmann::ordered_json{{"node", name_},
                                   {"drained", resp.drained()},
                                   {"remaining", left},
                                   {"message", resp.message()}}
                .dump(2)
         << "\n";
  } else {
    out_ << resp.message() << "\n";
    for (const v1::DrainRemaining& r : resp.remaining()) {
      out_ << "  " << r.volume() << ": " << r.why() << "\n";
    }
  }
  return kExitOk;
}

int NodeCommands::RunCordon(ControlClient& client, Format format) {
  return SetCordon(client, format, true);
}

int NodeCommands::RunUncordon(ControlClient& client, Format format) {
  return SetCordon(client, format, false);
}

int NodeCommands::SetCordon(ControlClient& client, Format format, bool cordoned) {
  v1::SetNodeCordonRequest req;
  req.set_node(name_);
  req.set_cordoned(cordoned);
  return RunRpc(client, &v1::Control::Stub::SetNodeCordon, req, err_,
                [&](const v1::SetNodeCordonResponse& resp) {
                  if (format == Format::kJson) {
                    out_ << nlohmann::ordered_json{{"node", name_},
                                                   {"cordoned", cordoned},
                                                   {"message", resp.message()}}
                                .dump(2)
                         << "\n";
                  } else {
                    out_ << resp.message() << "\n";
                  }
                  return kExitOk;
                });
}

int NodeCommands::RunList(ControlClient& client, Format format) {
  return RunRpc(client, &v1::Control::Stub::ListNodes, v1::ListNodesRequest(), err_,
                [&](const v1::ListNodesResponse& resp) {
                  if (format == Format::kJson) {
                    out_ << ToJson(resp).dump(2) << "\n";
                  } else {
                    out_ << NodeTable(resp);
                  }
                  return kExitOk;
                });
}

}  // namespace shale::cli
