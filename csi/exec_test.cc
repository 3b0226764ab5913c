#include "csi/exec.h"

#include <gtest/gtest.h>

namespace shale::csi {
namespace {

TEST(CsiExec, CapturesOutputAndExitCodeWithoutAShell) {
  auto r = Exec({"sh", "-c", "echo out; echo err >&2; exit 3"});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_EQ(r->out, "out\n");
  EXPECT_EQ(r->err, "err\n");
  // Arguments are passed as they are: no shell expands them.
  auto echo = Exec({"echo", "$HOME; rm -rf /"});
  ASSERT_TRUE(echo.ok());
  EXPECT_EQ(echo->out, "$HOME; rm -rf /\n");
}

TEST(CsiExec, TimesOutAndKills) {
  auto r = Exec({"sleep", "30"}, std::chrono::milliseconds(200));
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->timed_out);
  EXPECT_NE(r->exit_code, 0);
  EXPECT_NE(r->Describe("sleep").find("timed out"), std::string::npos);
}

TEST(CsiExec, MissingProgramIsAnError) {
  auto r = Exec({"/nonexistent/tool"});
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(FindTool("definitely-not-a-tool-xyz").empty());
  EXPECT_FALSE(FindTool("sh").empty());
}

}  // namespace
}  // namespace shale::csi
