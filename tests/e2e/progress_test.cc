// Progress and Ctrl-C of long CLI operations (docs/operations.md, "Progress"): `volume flatten`
// draws a bar with rate and ETA on a pseudo-terminal (script(1)) and plain lines without one,
// and so do `snapshot export`, `snapshot import` and `pool check`;
// SIGINT to `shale snapshot export` cancels the export in shaled, which removes the partial file
// and keeps serving. Needs qemu-io (qemu-utils) for data and script (bsdutils).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "tests/e2e/harness.h"

namespace shale::e2e {
namespace {

// A daemon with volume "src" (64 MiB, 32 MiB of data) and its snapshot src@s.
class ProgressTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string qemu_io = FindProgram("qemu-io");
    if (qemu_io.empty()) GTEST_SKIP() << "qemu-io is not installed (qemu-utils)";
    ASSERT_TRUE(h_.StartDaemon());
    ASSERT_EQ(h_.Shale({"volume", "create", "src", "--size", "64M"}).exit_code, 0);
    CommandResult w =
        RunProcess({qemu_io, "-f", "raw", h_.NbdUri("src"), "-c", "write -P 7 0 32M"});
    ASSERT_EQ(w.exit_code, 0) << w.Describe();
    ASSERT_EQ(h_.Shale({"snapshot", "create", "src", "s"}).exit_code, 0);
  }

  Harness h_;
};

TEST_F(ProgressTest, FlattenDrawsABarOnATerminalAndPlainLinesOtherwise) {
  const std::string script = FindProgram("script");
  if (script.empty()) GTEST_SKIP() << "script is not installed (bsdutils)";
  ASSERT_EQ(h_.Shale({"clone", "create", "src@s", "tty"}).exit_code, 0);
  ASSERT_EQ(h_.Shale({"clone", "create", "src@s", "plain"}).exit_code, 0);

  // On a pseudo-terminal: the line is redrawn with \r, with a bar, rate and the end at 100 %.
  const std::string command =
      "'" + ShaleBinary() + "' --endpoint '" + h_.endpoint() + "' volume flatten tty";
  CommandResult tty = RunProcess({script, "-qfec", command, "/dev/null"});
  ASSERT_EQ(tty.exit_code, 0) << tty.Describe();
  EXPECT_NE(tty.out.find("\rflattening 'tty' ["), std::string::npos) << tty.out;
  EXPECT_NE(tty.out.find("] 100% ("), std::string::npos) << tty.out;
  EXPECT_NE(tty.out.find(" clusters)"), std::string::npos) << tty.out;
  EXPECT_NE(tty.out.find("/s"), std::string::npos) << "a rate: " << tty.out;
  EXPECT_NE(tty.out.find("volume 'tty' flattened"), std::string::npos) << tty.out;

  // Without one: plain lines on stderr, no control characters, the result on stdout.
  CommandResult plain = h_.Shale({"volume", "flatten", "plain"});
  ASSERT_EQ(plain.exit_code, 0) << plain.Describe();
  EXPECT_EQ(plain.err.find('\r'), std::string::npos) << plain.err;
  EXPECT_EQ(plain.err.find('['), std::string::npos) << plain.err;
  EXPECT_NE(plain.err.find("flattening 'plain': 100% ("), std::string::npos) << plain.err;
  EXPECT_EQ(plain.err.back(), '\n');
  EXPECT_NE(plain.out.find("volume 'plain' flattened"), std::string::npos) << plain.out;
  // JSON output is unchanged by progress (it goes to stderr).
  CommandResult shown = h_.Shale({"volume", "show", "plain", "-o", "json"});
  EXPECT_EQ(shown.Json()["space"]["shared_bytes"], 0) << shown.out;
}

// Export, import and pool check stream their progress too: a bar on a terminal, plain lines
// otherwise, the result (and -o json) on stdout unchanged.
TEST_F(ProgressTest, ExportImportAndCheckReportProgress) {
  const std::string script = FindProgram("script");
  if (script.empty()) GTEST_SKIP() << "script is not installed (bsdutils)";
  const std::string file = h_.root() + "/src.stream";
  const std::string command = "'" + ShaleBinary() + "' --endpoint '" + h_.endpoint() +
                              "' snapshot export src@s '" + file + "'";
  CommandResult tty = RunProcess({script, "-qfec", command, "/dev/null"});
  ASSERT_EQ(tty.exit_code, 0) << tty.Describe();
  EXPECT_NE(tty.out.find("\rexporting 'src@s' ["), std::string::npos) << tty.out;
  EXPECT_NE(tty.out.find("] 100% (64 MiB of 64 MiB)"), std::string::npos) << tty.out;
  EXPECT_NE(tty.out.find("Digest:"), std::string::npos) << tty.out;

  CommandResult imported = h_.Shale({"snapshot", "import", file, "copy", "-o", "json"});
  ASSERT_EQ(imported.exit_code, 0) << imported.Describe();
  EXPECT_EQ(imported.err.find('\r'), std::string::npos) << imported.err;
  EXPECT_NE(imported.err.find("importing into 'copy': 100% ("), std::string::npos) << imported.err;
  EXPECT_EQ(imported.Json()["snapshot"]["name"], "copy@s") << imported.out;

  CommandResult check = h_.Shale({"pool", "check", "default"});
  ASSERT_EQ(check.exit_code, 0) << check.Describe();
  EXPECT_NE(check.err.find("checking pool 'default': 100% ("), std::string::npos) << check.err;
  EXPECT_NE(check.err.find(" units)"), std::string::npos) << check.err;
}

// The export writes FILE.partial, here a FIFO this test reads slowly: the export cannot finish
// before the SIGINT, so what happens after it is the cancellation's doing.
TEST_F(ProgressTest, CtrlCDuringAnExportCancelsItAndLeavesNoFile) {
  const std::string file = h_.root() + "/s.stream";
  const std::string partial = file + ".partial";
  ASSERT_EQ(mkfifo(partial.c_str(), 0600), 0);
  ChildProcess cli(
      {ShaleBinary(), "--endpoint", h_.endpoint(), "snapshot", "export", "src@s", file},
      h_.root() + "/export.log");
  const int fd = open(partial.c_str(), O_RDONLY | O_CLOEXEC);  // waits for shaled to open it
  ASSERT_GE(fd, 0);
  std::vector<char> buf(1 << 16);
  size_t got = 0;
  while (got < (1u << 20)) {  // 1 MiB of the 32 MiB stream
    const ssize_t n = read(fd, buf.data(), buf.size());
    ASSERT_GT(n, 0);
    got += static_cast<size_t>(n);
  }
  EXPECT_EQ(cli.Stop(SIGINT), 130) << cli.Log();
  EXPECT_NE(cli.Log().find("shale: interrupted: shaled cancels the export and removes the "
                           "partial file " +
                           file),
            std::string::npos)
      << cli.Log();
  // Drain what shaled still writes until it stops (EOF), with a deadline.
  bool eof = false;
  ASSERT_TRUE(WaitFor([&] {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 100) > 0) {
      const ssize_t n = read(fd, buf.data(), buf.size());
      if (n > 0) got += static_cast<size_t>(n);
      eof = n == 0;
    }
    return eof;
  }));
  close(fd);
  EXPECT_LT(got, 32u << 20) << "the export stopped before its end";
  ASSERT_TRUE(WaitFor([&] {
    return !std::filesystem::exists(partial) && !std::filesystem::exists(file);
  })) << "no partial export file is left";
  // shaled says why it stopped: the audit record of the export (written as its handler ends).
  nlohmann::json exported;
  EXPECT_TRUE(WaitFor([&] {
    const nlohmann::json audit = h_.Shale({"audit", "-o", "json"}).Json();
    for (const nlohmann::json& r : audit["records"]) {
      if (r["action"] == "ExportSnapshot") exported = r;
    }
    return exported.is_object();
  }));
  EXPECT_EQ(exported["result"], "aborted") << exported;
  EXPECT_NE(exported.value("error", "").find("export cancelled"), std::string::npos) << exported;

  // shaled keeps serving: the same export runs to its end now.
  EXPECT_TRUE(h_.daemon_running());
  CommandResult again = h_.Shale({"snapshot", "export", "src@s", file, "-o", "json"});
  ASSERT_EQ(again.exit_code, 0) << again.Describe();
  EXPECT_TRUE(std::filesystem::exists(file));
}

}  // namespace
}  // namespace shale::e2e
