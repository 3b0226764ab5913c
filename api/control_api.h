// Conventions of the control API shared by shaled (server) and shale (client), beyond what
// api/control.proto can express. Header-only: the CLI links neither daemon nor engine.
#pragma once

namespace shale::api {

// File name of the control socket inside the data dir: <data-dir>/shaled.sock.
inline constexpr char kControlSocketName[] = "shaled.sock";

// Trailing-metadata key that shaled sets on every error it produces itself (value: the name of
// the shale::StatusCode, e.g. "not found"). A client uses it to tell "shaled refused" (print the
// message as is) from "the transport failed" (shaled unreachable, timed out, ...).
inline constexpr char kShaleErrorMetadataKey[] = "shale-error";

// Trailing-metadata key of an answer whose audit record shaled could not write (value: the
// error; docs/operations.md, "Audit log"). The change was made; the CLI prints a warning.
inline constexpr char kAuditErrorMetadataKey[] = "shale-audit-error";

}  // namespace shale::api
