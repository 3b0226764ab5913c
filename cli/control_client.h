// The control-API client of the shale CLI and the helpers every command file shares
// (cli_commands.cc for status and exports; pool_commands.cc, volume_commands.cc,
// qos_commands.cc, snapshot_commands.cc for their command groups).
// Not part of the CLI's interface (cli_commands.h).
#pragma once

#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "api/control.grpc.pb.h"
#include "cli/cli_commands.h"
#include "cli/progress.h"

namespace shale::cli {

enum class Format { kTable, kJson };

// Turns a failed RPC into the line shown to the user (without the "shale: " prefix).
std::string DescribeRpcError(const grpc::Status& status, const grpc::ClientContext& ctx,
                             const std::string& endpoint, unsigned timeout_seconds);

template <typename Request, typename Response>
using Rpc = grpc::Status (v1::Control::Stub::*)(grpc::ClientContext*, const Request&, Response*);
template <typename Request, typename Response>
using StreamRpc = std::unique_ptr<grpc::ClientReader<Response>> (v1::Control::Stub::*)(
    grpc::ClientContext*, const Request&);

class ControlClient {
 public:
  ControlClient(std::string endpoint, unsigned timeout_seconds)
      : endpoint_(std::move(endpoint)),
        timeout_seconds_(timeout_seconds),
        stub_(v1::Control::NewStub(
            grpc::CreateChannel(endpoint_, grpc::InsecureChannelCredentials()))) {}

  // Runs one unary RPC with the deadline. Returns "" on success, else the error line.
  template <typename Request, typename Response>
  std::string Call(Rpc<Request, Response> rpc, const Request& request, Response* response) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(timeout_seconds_));
    grpc::Status status = ((*stub_).*rpc)(&ctx, request, response);
    audit_error_ = AuditError(ctx);
    if (status.ok()) return {};
    return DescribeRpcError(status, ctx, endpoint_, timeout_seconds_);
  }

  // The kAuditErrorMetadataKey trailer of the last Call() or Stream(): shaled made the change but
  // could not record it in its audit log. Empty normally.
  const std::string& audit_error() const { return audit_error_; }

  // Runs one server-streaming RPC; `on_message(const Response&)` sees every message as it
  // arrives. No deadline unless `with_deadline`: a flatten runs as long as the data takes and
  // reports progress all along; an export, import or check keeps --timeout (shaled cancels it
  // when the CLI gives up). Returns "" on success, else the error line.
  template <typename Request, typename Response, typename OnMessage>
  std::string Stream(StreamRpc<Request, Response> rpc, const Request& request, OnMessage on_message,
                     bool with_deadline = false) {
    grpc::ClientContext ctx;
    if (with_deadline) {
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(timeout_seconds_));
    }
    std::unique_ptr<grpc::ClientReader<Response>> reader = ((*stub_).*rpc)(&ctx, request);
    Response message;
    while (reader->Read(&message)) on_message(message);
    grpc::Status status = reader->Finish();
    audit_error_ = AuditError(ctx);
    if (status.ok()) return {};
    return DescribeRpcError(status, ctx, endpoint_, timeout_seconds_);
  }

 private:
  static std::string AuditError(const grpc::ClientContext& ctx);

  const std::string endpoint_;
  const unsigned timeout_seconds_;
  std::string audit_error_;
  std::unique_ptr<v1::Control::Stub> stub_;
};

// What the selected command does once the command line is parsed; set by exactly one leaf
// command, run by RunShale().
using Action = std::function<int(ControlClient&, Format)>;

// A CLI11 callback that makes `(commands->*run)(client, format)` the action. `commands` must
// outlive the action.
template <typename Commands>
std::function<void()> SelectAction(Action* action, Commands* commands,
                                   int (Commands::*run)(ControlClient&, Format)) {
  return [action, commands, run] {
    *action = [commands, run](ControlClient& client, Format format) {
      return (commands->*run)(client, format);
    };
  };
}

// Writes the audit warning of the last call, and `error` when there is one; false on error.
bool ReportRpcError(const ControlClient& client, const std::string& error, std::ostream& err);

// Runs one RPC: on success `print(response)` writes the result and returns the exit code; on
// failure the error line goes to `err`.
template <typename Request, typename Response, typename Print>
int RunRpc(ControlClient& client, Rpc<Request, Response> rpc, const Request& request,
           std::ostream& err, Print print) {
  Response response;
  const std::string error = client.Call(rpc, request, &response);
  if (!ReportRpcError(client, error, err)) return kExitFailure;
  return print(response);
}

// Runs a long operation's streaming RPC (ExportSnapshot, ImportSnapshot, CheckPool: messages
// {progress: {done, total}}, the last one with {result} too) with --timeout: progress drives
// `meter`; on success `print(result)` writes the result and returns the exit code.
template <typename Request, typename Message, typename Print>
int RunWithProgress(ControlClient& client, StreamRpc<Request, Message> rpc, const Request& request,
                    ProgressMeter& meter, std::ostream& err, Print print) {
  Message last;
  bool have_result = false;
  std::string error = client.Stream(
      rpc, request,
      [&](const Message& m) {
        if (m.progress().total() > 0) meter.Update(m.progress().done(), m.progress().total());
        if (m.has_result()) {
          last = m;
          have_result = true;
        }
      },
      /*with_deadline=*/true);
  if (error.empty() && !have_result) error = "shaled ended the operation without its result";
  if (!error.empty()) meter.Abandon();
  if (!ReportRpcError(client, error, err)) return kExitFailure;
  meter.Finish();
  return print(last.result());
}

// Accepts what ParseSize accepts, but not 0 and nothing above `max`.
CLI::Validator SizeValidator(uint64_t max = UINT64_MAX);
// Called after a successful parse, so the validators already accepted the text.
uint64_t SizeOf(const std::string& text);

// Splits repeated "KEY=VALUE" --label values into `out`; false with `error` when one has no
// '=' or a key repeats. The daemon validates the characters.
bool ParseLabels(const std::vector<std::string>& specs, std::map<std::string, std::string>* out,
                 std::string* error);

}  // namespace shale::cli
