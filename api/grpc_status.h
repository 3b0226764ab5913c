// The one place where a shale::Status becomes a gRPC status, for every gRPC service shaled
// serves (the control API and CSI). Errors are values inside Shale; gRPC codes exist only at
// these edges.
//
//   Shale                                  gRPC
//   InvalidArgument                        INVALID_ARGUMENT
//   NotFound                               NOT_FOUND
//   AlreadyExists                          ALREADY_EXISTS
//   NoSpace                                RESOURCE_EXHAUSTED
//   FailedPrecondition, Busy               FAILED_PRECONDITION
//   OutOfRange                             OUT_OF_RANGE
//   PermissionDenied                       PERMISSION_DENIED
//   NotSupported                           UNIMPLEMENTED
//   Unavailable                            UNAVAILABLE
//   Aborted                                ABORTED
//   IoError, Corruption, Internal          INTERNAL
//
// A CSI handler that must answer a spec-mandated code for a particular case (e.g.
// ALREADY_EXISTS for an idempotency conflict) builds that status itself; every other error goes
// through this table.
#pragma once

#include <grpcpp/support/status.h>

#include "engine/common/status.h"

namespace shale::api {

grpc::StatusCode ToGrpcCode(StatusCode code);
// The gRPC status with the same message (OK for an OK status).
grpc::Status ToGrpcStatus(const Status& status);

}  // namespace shale::api
