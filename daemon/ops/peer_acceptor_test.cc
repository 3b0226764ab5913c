#include "daemon/ops/peer_acceptor.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>

namespace shale::daemon::ops {
namespace {

TEST(UnixAcceptorTest, RecordsTheCallersCredentialsUnderItsFd) {
  char tmpl[] = "/tmp/shale-acceptor-test-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string path = std::string(tmpl) + "/s.sock";
  PeerRegistry registry;
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::pair<int, PeerCreds>> accepted;
  auto acceptor = UnixAcceptor::Start(path, "test", &registry, [&](int fd, const PeerCreds& c) {
    std::lock_guard lock(mu);
    accepted.emplace_back(fd, c);
    cv.notify_all();
  });
  ASSERT_TRUE(acceptor.ok()) << acceptor.status();
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  const int client = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  ASSERT_EQ(connect(client, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return !accepted.empty(); }));
  }
  const auto [fd, creds] = accepted.front();
  EXPECT_EQ(creds.pid, getpid());
  EXPECT_EQ(creds.uid, getuid());
  EXPECT_EQ(creds.gid, getgid());
  std::string comm;
  std::getline(std::ifstream("/proc/self/comm"), comm);
  EXPECT_EQ(creds.command, comm);
  auto found = registry.Lookup("fd:" + std::to_string(fd));
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->pid, getpid());
  EXPECT_FALSE(registry.Lookup("unix:/x").has_value());
  EXPECT_FALSE(registry.Lookup("fd:99999").has_value());
  EXPECT_FALSE(registry.Lookup("fd:1x").has_value());
  close(fd);
  close(client);
  (*acceptor)->Stop();
  std::filesystem::remove_all(tmpl);
}

}  // namespace
}  // namespace shale::daemon::ops
