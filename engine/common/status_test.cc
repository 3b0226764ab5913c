#include "engine/common/status.h"

#include <gtest/gtest.h>

#include <cerrno>

#include "engine/common/result.h"

namespace shale {
namespace {

TEST(StatusTest, OkIsDefaultAndCarriesNothing) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kOk);
  EXPECT_EQ(s.ToString(), "OK");
  EXPECT_EQ(s.ToErrno(), 0);
}

TEST(StatusTest, FactoriesSetCodeAndMessage) {
  Status s = Status::NotFound("volume 'x'");
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(s.IsNotFound());
  EXPECT_EQ(s.message(), "volume 'x'");
  EXPECT_EQ(s.ToString(), "not found: volume 'x'");
}

TEST(StatusTest, FromErrnoMapsCommonErrors) {
  EXPECT_EQ(Status::FromErrno(ENOSPC, "w").code(), StatusCode::kNoSpace);
  EXPECT_EQ(Status::FromErrno(-EIO, "w").code(), StatusCode::kIoError);
  EXPECT_EQ(Status::FromErrno(EPERM, "w").code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(Status::FromErrno(EOPNOTSUPP, "w").code(), StatusCode::kNotSupported);
  EXPECT_EQ(Status::FromErrno(EIO, "w").sys_errno(), EIO);
  EXPECT_TRUE(Status::FromErrno(0, "w").ok());
}

TEST(StatusTest, ToErrnoChoosesProtocolErrors) {
  EXPECT_EQ(Status::NoSpace("").ToErrno(), ENOSPC);
  EXPECT_EQ(Status::PermissionDenied("").ToErrno(), EPERM);
  EXPECT_EQ(Status::InvalidArgument("").ToErrno(), EINVAL);
  EXPECT_EQ(Status::Corruption("").ToErrno(), EIO);
}

TEST(StatusTest, CopyIsDeepAndContextPrefixes) {
  Status a = Status::IoError("disk", EIO);
  Status b = a;
  a = Status::Ok();
  EXPECT_FALSE(b.ok());
  EXPECT_EQ(b.WithContext("pool p").message(), "pool p: disk");
  EXPECT_EQ(b.WithContext("pool p").sys_errno(), EIO);
}

Result<int> Half(int x) {
  if (x % 2 != 0) return Status::InvalidArgument("odd");
  return x / 2;
}

Result<int> Quarter(int x) {
  SHALE_ASSIGN_OR_RETURN(int h, Half(x));
  SHALE_ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

Status CheckEven(int x) {
  SHALE_RETURN_IF_ERROR(Half(x).status());
  return Status::Ok();
}

TEST(ResultTest, ValueAndErrorPropagate) {
  EXPECT_EQ(Quarter(8).value(), 2);
  Result<int> r = Quarter(6);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(CheckEven(4).ok());
  EXPECT_FALSE(CheckEven(3).ok());
}

TEST(ResultDeathTest, ValueOfErrorAborts) {
  Result<int> r = Status::NotFound("x");
  EXPECT_DEATH((void)r.value(), "invariant broken");
}

}  // namespace
}  // namespace shale
