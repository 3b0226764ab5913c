#include "cli/pool_commands.h"

#include <filesystem>

#include "cli/output.h"
#include "cli/progress.h"

namespace shale::cli {

void PoolCommands::PrintJson(const nlohmann::ordered_json& json) { out_ << json.dump(2) << "\n"; }

int PoolCommands::PrintPool(Format format, const v1::Pool& pool) {
  format == Format::kJson ? PrintJson(ToJson(pool)) : void(out_ << PoolView(pool));
  return kExitOk;
}

void PoolCommands::AddCommands(CLI::App& app) {
  CLI::App* pool_cmd =
      app.add_subcommand("pool", "Manage pools (block devices or files holding volumes)");
  pool_cmd->require_subcommand(1);

  CLI::App* create = pool_cmd->add_subcommand(
      "create", "Create a pool on a block device or a file (a missing file is created sparse)");
  create->add_option("NAME", name_, "Pool name")->required();
  create->add_option("--device", device_, "Block device or file backing the pool")
      ->required()
      ->type_name("PATH");
  create
      ->add_option("--size", size_,
                   "Size of the file to create (default: the existing device's size)")
      ->check(SizeValidator())
      ->type_name("SIZE");
  create
      ->add_option("--cluster-size", cluster_size_,
                   "Allocation unit: a power of two from 4K to 256K (default 64K)")
      ->check(SizeValidator(UINT32_MAX))
      ->type_name("SIZE");
  create->add_flag("--force", force_, "Format the device even if it holds data or another pool");
  create->callback(SelectAction(action_, this, &PoolCommands::RunCreate));

  CLI::App* list = pool_cmd->add_subcommand("list", "List pools");
  list->callback(SelectAction(action_, this, &PoolCommands::RunList));

  CLI::App* show = pool_cmd->add_subcommand("show", "Show one pool");
  show->add_option("NAME", name_, "Pool name")->required();
  show->callback(SelectAction(action_, this, &PoolCommands::RunShow));

  CLI::App* del = pool_cmd->add_subcommand(
      "delete", "Delete a pool (wipes its superblock; removes the file if shaled created it)");
  del->add_option("NAME", name_, "Pool name")->required();
  del->add_flag("--force", force_, "Also delete the pool's volumes");
  del->callback(SelectAction(action_, this, &PoolCommands::RunDelete));

  CLI::App* check = pool_cmd->add_subcommand(
      "check", "Check a pool's mappings against its allocation bitmap (exit 1 on problems)");
  check->add_option("NAME", name_, "Pool name")->required();
  check->callback(SelectAction(action_, this, &PoolCommands::RunCheck));

  CLI::App* set = pool_cmd->add_subcommand(
      "set", "Change a pool's fill thresholds and overcommit limit (docs/operations.md)");
  set->add_option("NAME", name_, "Pool name")->required();
  set->add_option("--warn", warn_, "Warning threshold of used space, percent (default 80)")
      ->check(CLI::Range(1u, 99u))
      ->type_name("PERCENT");
  set->add_option("--critical", critical_, "Critical threshold of used space, percent (default 90)")
      ->check(CLI::Range(2u, 100u))
      ->type_name("PERCENT");
  set->add_option(
         "--overcommit", overcommit_,
         "Limit of the volumes' sizes summed, as a share of the capacity, e.g. 500% (default "
         "300%), or unlimited")
      ->check(CLI::Validator(
          [](std::string& text) -> std::string {
            return OvercommitPercent(text).has_value() || text == "unlimited"
                       ? std::string()
                       : "expected a percentage like 300% (1%..100000%) or unlimited";
          },
          /*validator_desc=*/""))
      ->type_name("PERCENT|unlimited");
  set->callback(SelectAction(action_, this, &PoolCommands::RunSet));

  CLI::App* expand = pool_cmd->add_subcommand(
      "expand",
      "Grow a pool online into its device: a file is extended to --size first; a block "
      "device that grew is taken in as it is");
  expand->add_option("NAME", name_, "Pool name")->required();
  expand->add_option("--size", size_, "New size of the pool's file (default: its size now)")
      ->check(SizeValidator())
      ->type_name("SIZE");
  expand->callback(SelectAction(action_, this, &PoolCommands::RunExpand));
}

std::optional<uint32_t> PoolCommands::OvercommitPercent(std::string_view text) {
  if (text.ends_with('%')) text.remove_suffix(1);
  if (text.empty() || text.size() > 6) return std::nullopt;
  uint32_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + static_cast<uint32_t>(c - '0');
  }
  if (value < 1 || value > 100000) return std::nullopt;
  return value;
}

int PoolCommands::RunSet(ControlClient& client, Format format) {
  v1::SetPoolCapacityRequest req;
  req.set_name(name_);
  if (warn_ != 0) req.set_warn_percent(warn_);
  if (critical_ != 0) req.set_critical_percent(critical_);
  if (overcommit_ == "unlimited") {
    req.set_overcommit_unlimited(true);
  } else if (!overcommit_.empty()) {
    req.set_overcommit_percent(*OvercommitPercent(overcommit_));
  }
  return RunRpc(client, &v1::Control::Stub::SetPoolCapacity, req, err_,
                [&](const v1::Pool& pool) { return PrintPool(format, pool); });
}

int PoolCommands::RunExpand(ControlClient& client, Format format) {
  v1::ExpandPoolRequest req;
  req.set_name(name_);
  if (!size_.empty()) req.set_size_bytes(SizeOf(size_));
  return RunRpc(client, &v1::Control::Stub::ExpandPool, req, err_,
                [&](const v1::Pool& pool) { return PrintPool(format, pool); });
}

int PoolCommands::RunCreate(ControlClient& client, Format format) {
  v1::CreatePoolRequest req;
  req.set_name(name_);
  // shaled has its own working directory: a relative path means the caller's.
  std::error_code ec;
  const std::filesystem::path device = std::filesystem::absolute(device_, ec);
  req.set_device_path(ec ? device_ : device.lexically_normal().string());
  if (!size_.empty()) req.set_size_bytes(SizeOf(size_));
  if (!cluster_size_.empty()) req.set_cluster_size(static_cast<uint32_t>(SizeOf(cluster_size_)));
  req.set_force(force_);
  return RunRpc(client, &v1::Control::Stub::CreatePool, req, err_,
                [&](const v1::Pool& pool) { return PrintPool(format, pool); });
}

int PoolCommands::RunList(ControlClient& client, Format format) {
  return RunRpc(client, &v1::Control::Stub::ListPools, v1::ListPoolsRequest(), err_,
                [&](const v1::ListPoolsResponse& resp) {
                  if (format == Format::kJson) {
                    nlohmann::ordered_json pools = nlohmann::ordered_json::array();
                    for (const v1::Pool& p : resp.pools()) pools.push_back(ToJson(p));
                    PrintJson({{"pools", pools}});
                  } else {
                    out_ << PoolTable(resp);
                  }
                  return kExitOk;
                });
}

int PoolCommands::RunShow(ControlClient& client, Format format) {
  v1::GetPoolRequest req;
  req.set_name(name_);
  return RunRpc(client, &v1::Control::Stub::GetPool, req, err_,
                [&](const v1::Pool& pool) { return PrintPool(format, pool); });
}

int PoolCommands::RunDelete(ControlClient& client, Format format) {
  v1::DeletePoolRequest req;
  req.set_name(name_);
  req.set_force(force_);
  return RunRpc(client, &v1::Control::Stub::DeletePool, req, err_,
                [&](const v1::DeletePoolResponse&) {
                  format == Format::kJson ? PrintJson({{"name", name_}, {"deleted", true}})
                                          : void(out_ << "pool '" << name_ << "' deleted\n");
                  return kExitOk;
                });
}

int PoolCommands::RunCheck(ControlClient& client, Format format) {
  v1::CheckPoolRequest req;
  req.set_name(name_);
  const InterruptNotice notice("shaled stops the check of pool '" + name_ +
                               "' (a check changes nothing)");
  ProgressMeter meter(err_, err_is_terminal_, "checking pool '" + name_ + "'",
                      ProgressMeter::Unit::kCount, "units");
  return RunWithProgress(client, &v1::Control::Stub::CheckPool, req, meter, err_,
                         [&](const v1::CheckPoolResponse& resp) {
                           format == Format::kJson ? PrintJson(ToJson(name_, resp))
                                                   : void(out_ << CheckView(name_, resp));
                           if (resp.clean()) return kExitOk;
                           err_ << "shale: pool '" << name_ << "' has " << resp.problems_size()
                                << " problem(s)\n";
                           return kExitFailure;
                         });
}

}  // namespace shale::cli
