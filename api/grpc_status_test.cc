#include "api/grpc_status.h"

#include <gtest/gtest.h>

namespace shale::api {
namespace {

TEST(GrpcStatusTest, EveryCodeHasItsGrpcCode) {
  const std::pair<StatusCode, grpc::StatusCode> table[] = {
      {StatusCode::kOk, grpc::StatusCode::OK},
      {StatusCode::kInvalidArgument, grpc::StatusCode::INVALID_ARGUMENT},
      {StatusCode::kNotFound, grpc::StatusCode::NOT_FOUND},
      {StatusCode::kAlreadyExists, grpc::StatusCode::ALREADY_EXISTS},
      {StatusCode::kNoSpace, grpc::StatusCode::RESOURCE_EXHAUSTED},
      {StatusCode::kFailedPrecondition, grpc::StatusCode::FAILED_PRECONDITION},
      {StatusCode::kBusy, grpc::StatusCode::FAILED_PRECONDITION},
      {StatusCode::kOutOfRange, grpc::StatusCode::OUT_OF_RANGE},
      {StatusCode::kPermissionDenied, grpc::StatusCode::PERMISSION_DENIED},
      {StatusCode::kNotSupported, grpc::StatusCode::UNIMPLEMENTED},
      {StatusCode::kUnavailable, grpc::StatusCode::UNAVAILABLE},
      {StatusCode::kAborted, grpc::StatusCode::ABORTED},
      {StatusCode::kIoError, grpc::StatusCode::INTERNAL},
      {StatusCode::kCorruption, grpc::StatusCode::INTERNAL},
      {StatusCode::kInternal, grpc::StatusCode::INTERNAL},
  };
  for (const auto& [shale_code, grpc_code] : table) {
    EXPECT_EQ(ToGrpcCode(shale_code), grpc_code) << StatusCodeName(shale_code);
  }
}

TEST(GrpcStatusTest, KeepsTheMessage) {
  grpc::Status st = ToGrpcStatus(Status::NotFound("volume 'x' not found"));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(st.error_message(), "volume 'x' not found");
  EXPECT_TRUE(ToGrpcStatus(Status::Ok()).ok());
}

}  // namespace
}  // namespace shale::api
