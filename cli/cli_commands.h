// The shale admin CLI: command-line parsing, the control-API client and error reporting.
//
// Every command is one unary RPC to shaled's control API. Results go to `out` (a table or a
// key/value view by default, JSON with -o json); every failure is exactly one "shale: ..." line
// on `err` and a non-zero exit code.
#pragma once

#include <ostream>
#include <string>
#include <string_view>

#include "engine/common/result.h"

namespace shale::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;  // the daemon refused, failed, or could not be reached
inline constexpr int kExitUsage = 2;    // the command line is wrong

// The control socket of the embedded default (`shaled` with no options, run from the same
// directory), so `shale` works right after scripts/quickstart without flags.
inline constexpr char kDefaultEndpoint[] = "unix://./shale-data/shaled.sock";
inline constexpr char kEndpointEnvVar[] = "SHALE_ENDPOINT";

// Resolves a user-given endpoint. "unix://PATH" and "unix:PATH" may be relative (to the cwd)
// and become "unix:///abs/path"; a bare path starting with '/' or '.' is taken as a socket path;
// anything else (host:port, dns:///...) is passed to gRPC unchanged. The result is what gRPC
// dials and what error messages show.
Result<std::string> ResolveEndpoint(std::string_view text);

// Runs one shale invocation; returns the process exit code.
int RunShale(int argc, const char* const* argv, std::ostream& out, std::ostream& err);

}  // namespace shale::cli
