// EtcdClient against a real etcd: KV, transactions and their races, leases, watches, failures.
#include "cluster/etcd_client.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <latch>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "tests/cluster/etcd_test_util.h"

namespace shale::cluster {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using Steady = std::chrono::steady_clock;

// A loopback port nothing listens on (connections are refused at once).
uint16_t DeadPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  EXPECT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  close(fd);
  return ntohs(addr.sin_port);
}

// Collects watch updates for a test.
struct Collector {
  std::mutex mu;
  std::vector<WatchUpdate> updates;
  std::vector<WatchEvent> events;  // every event of every non-reset update, in order

  Watcher::Callback Callback() {
    return [this](const WatchUpdate& u) {
      std::lock_guard<std::mutex> lock(mu);
      updates.push_back(u);
      if (!u.reset) events.insert(events.end(), u.events.begin(), u.events.end());
    };
  }
  size_t event_count() {
    std::lock_guard<std::mutex> lock(mu);
    return events.size();
  }
};

using EtcdClientTest = SharedEtcdTest;

TEST_F(EtcdClientTest, PutGetRangeDelete) {
  for (const char* k : {"c", "a", "b"}) {
    Result<int64_t> rev = client_->Put(prefix_ + k, std::string("value-") + k);
    ASSERT_TRUE(rev.ok()) << rev.status();
    EXPECT_GT(*rev, 0);
  }
  Result<std::optional<KeyValue>> a = client_->Get(prefix_ + "a");
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(a->has_value());
  EXPECT_EQ((*a)->value, "value-a");
  EXPECT_EQ((*a)->version, 1);
  Result<std::optional<KeyValue>> none = client_->Get(prefix_ + "zz");
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->has_value());

  RangeOptions all;
  all.prefix = true;
  Result<RangeResult> range = client_->Range(prefix_, all);
  ASSERT_TRUE(range.ok()) << range.status();
  ASSERT_EQ(range->kvs.size(), 3u);
  EXPECT_EQ(range->kvs[0].key, prefix_ + "a");
  EXPECT_EQ(range->kvs[2].key, prefix_ + "c");
  all.limit = 2;
  range = client_->Range(prefix_, all);
  ASSERT_TRUE(range.ok()) << range.status();
  EXPECT_EQ(range->kvs.size(), 2u);
  EXPECT_TRUE(range->more);
  EXPECT_EQ(range->count, 3);

  // RangeAll in pages of two keys reads all three at one revision.
  EtcdClientOptions paged = TestClientOptions();
  paged.range_page = 2;
  std::shared_ptr<EtcdClient> pager = Connect(etcd_->endpoint(), paged);
  Result<RangeResult> pages = pager->RangeAll(prefix_);
  ASSERT_TRUE(pages.ok()) << pages.status();
  ASSERT_EQ(pages->kvs.size(), 3u);
  EXPECT_EQ(pages->kvs[1].key, prefix_ + "b");

  Result<int64_t> deleted = client_->Delete(prefix_ + "a");
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, 1);
  deleted = client_->Delete(prefix_, /*prefix=*/true);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, 2);
}

TEST_F(EtcdClientTest, TxnComparesAndBranches) {
  const std::string key = prefix_ + "k";
  // Create only if absent (version 0).
  TxnRequest create;
  create.compares = {Compare::Version(key, 0)};
  create.then_ops = {TxnOp::Put(key, "v1")};
  create.else_ops = {TxnOp::Get(key)};
  Result<TxnResult> r = client_->Txn(create);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->succeeded);
  const int64_t rev1 = r->revision;
  r = client_->Txn(create);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->succeeded);
  ASSERT_EQ(r->results.size(), 1u);
  ASSERT_EQ(r->results[0].range.kvs.size(), 1u);
  EXPECT_EQ(r->results[0].range.kvs[0].value, "v1");
  EXPECT_EQ(r->results[0].range.kvs[0].mod_revision, rev1);

  // Compare on value and mod_revision; several ops in a branch.
  TxnRequest swap;
  swap.compares = {Compare::Value(key, "v1"), Compare::ModRevision(key, rev1)};
  swap.then_ops = {TxnOp::Put(key, "v2"), TxnOp::Put(prefix_ + "other", "x"), TxnOp::Get(key)};
  r = client_->Txn(swap);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->succeeded);
  ASSERT_EQ(r->results.size(), 3u);
  EXPECT_EQ(r->results[2].range.kvs.at(0).value, "v2");
  r = client_->Txn(swap);  // both compares fail now
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->succeeded);

  TxnRequest newer;
  newer.compares = {Compare::ModRevision(key, rev1, Compare::Op::kGreater),
                    Compare::Version(key, 2)};
  newer.then_ops = {TxnOp::DeletePrefix(prefix_)};
  r = client_->Txn(newer);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->succeeded);
  EXPECT_EQ(r->results.at(0).deleted, 2);

  // etcd refuses a Txn that writes one key twice: an error, not a retry loop.
  TxnRequest dup;
  dup.then_ops = {TxnOp::Put(key, "a"), TxnOp::Put(key, "b")};
  r = client_->Txn(dup);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status();
}

TEST_F(EtcdClientTest, TxnRaceTwoWritersOneWins) {
  const std::string key = prefix_ + "raced";
  ASSERT_TRUE(client_->Put(key, "start").ok());
  std::shared_ptr<EtcdClient> other = Connect(etcd_->endpoint());
  constexpr int kRounds = 20;
  for (int round = 0; round < kRounds; ++round) {
    Result<std::optional<KeyValue>> now = client_->Get(key);
    ASSERT_TRUE(now.ok() && now->has_value()) << now.status();
    const int64_t seen = (*now)->mod_revision;
    std::latch go(2);
    std::atomic<int> wins{0};
    std::atomic<int> losses{0};
    auto writer = [&](EtcdClient* c, const std::string& name) {
      TxnRequest t;
      t.compares = {Compare::ModRevision(key, seen)};
      t.then_ops = {TxnOp::Put(key, name + "-" + std::to_string(round))};
      t.else_ops = {TxnOp::Get(key)};
      go.arrive_and_wait();
      Result<TxnResult> r = c->Txn(t);
      ASSERT_TRUE(r.ok()) << r.status();
      (r->succeeded ? wins : losses)++;
    };
    std::thread a(writer, client_.get(), "a");
    std::thread b(writer, other.get(), "b");
    a.join();
    b.join();
    EXPECT_EQ(wins.load(), 1) << "round " << round;
    EXPECT_EQ(losses.load(), 1) << "round " << round;
  }
}

TEST_F(EtcdClientTest, LeasedKeyStaysWhileKeptAliveAndExpiresWithout) {
  Result<LeaseGrant> grant = client_->GrantLease(seconds(1));
  ASSERT_TRUE(grant.ok()) << grant.status();
  const std::string key = prefix_ + "leased";
  ASSERT_TRUE(client_->Put(key, "x", grant->id).ok());
  std::atomic<int> lost{0};
  auto keepalive = client_->KeepAlive(grant->id, grant->ttl, [&](const Status&) { ++lost; });
  // Three TTLs: without renewals the key would be gone.
  const auto until = Steady::now() + 3 * grant->ttl;
  while (Steady::now() < until) {
    Result<std::optional<KeyValue>> kv = client_->Get(key);
    ASSERT_TRUE(kv.ok()) << kv.status();
    ASSERT_TRUE(kv->has_value()) << "the key expired while its lease was kept alive";
    EXPECT_EQ((*kv)->lease, grant->id);
    std::this_thread::sleep_for(milliseconds(200));
  }
  EXPECT_FALSE(keepalive->lost());
  keepalive.reset();  // stop renewing (no revoke)
  const auto stopped = Steady::now();
  EXPECT_TRUE(WaitFor(
      [&] {
        Result<std::optional<KeyValue>> kv = client_->Get(key);
        return kv.ok() && !kv->has_value();
      },
      grant->ttl + seconds(5)));
  // Not before its TTL (renewed at most ttl/3 before the stop).
  EXPECT_GE(Steady::now() - stopped, grant->ttl / 2);
  EXPECT_EQ(lost.load(), 0);
}

TEST_F(EtcdClientTest, KeepAliveReportsARevokedLease) {
  Result<LeaseGrant> grant = client_->GrantLease(seconds(3));
  ASSERT_TRUE(grant.ok()) << grant.status();
  std::mutex mu;
  std::vector<Status> lost;
  auto keepalive = client_->KeepAlive(grant->id, grant->ttl, [&](const Status& why) {
    std::lock_guard<std::mutex> lock(mu);
    lost.push_back(why);
  });
  ASSERT_TRUE(client_->RevokeLease(grant->id).ok());
  EXPECT_TRUE(WaitFor([&] { return keepalive->lost(); }, grant->ttl + seconds(2)));
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_EQ(lost.size(), 1u);
  EXPECT_TRUE(lost[0].IsNotFound()) << lost[0];
  EXPECT_EQ(client_->RevokeLease(grant->id).code(), StatusCode::kNotFound);
}

TEST_F(EtcdClientTest, WatchStartsWithAResetThenDeliversOrderedEvents) {
  ASSERT_TRUE(client_->Put(prefix_ + "before", "0").ok());
  Collector c;
  Result<std::unique_ptr<Watcher>> watcher = client_->Watch(prefix_, 0, c.Callback());
  ASSERT_TRUE(watcher.ok()) << watcher.status();
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> lock(c.mu);
    return !c.updates.empty();
  }));
  {
    std::lock_guard<std::mutex> lock(c.mu);
    ASSERT_TRUE(c.updates[0].reset);
    ASSERT_EQ(c.updates[0].kvs.size(), 1u);
    EXPECT_EQ(c.updates[0].kvs[0].key, prefix_ + "before");
  }
  // Puts and deletes over a few keys; outside the prefix nothing is seen.
  std::vector<std::pair<WatchEvent::Type, std::string>> expected;
  for (int i = 0; i < 60; ++i) {
    const std::string key = prefix_ + "k" + std::to_string(i % 7);
    if (i % 5 == 4) {
      ASSERT_TRUE(client_->Delete(key).ok());
      expected.emplace_back(WatchEvent::Type::kDelete, key);
    } else {
      ASSERT_TRUE(client_->Put(key, std::to_string(i)).ok());
      expected.emplace_back(WatchEvent::Type::kPut, key + "=" + std::to_string(i));
    }
    ASSERT_TRUE(client_->Put("/elsewhere" + prefix_, "x").ok());
  }
  // Deleting a key that does not exist produces no event: compare what was really deleted.
  std::vector<std::pair<WatchEvent::Type, std::string>> real;
  std::set<std::string> present = {prefix_ + "before"};
  for (const auto& [type, what] : expected) {
    if (type == WatchEvent::Type::kPut) {
      present.insert(what.substr(0, what.find('=')));
      real.emplace_back(type, what);
    } else if (present.erase(what) > 0) {
      real.emplace_back(type, what);
    }
  }
  ASSERT_TRUE(WaitFor([&] { return c.event_count() >= real.size(); })) << c.event_count();
  std::lock_guard<std::mutex> lock(c.mu);
  ASSERT_EQ(c.events.size(), real.size());
  int64_t last = 0;
  for (size_t i = 0; i < real.size(); ++i) {
    const WatchEvent& e = c.events[i];
    EXPECT_GT(e.kv.mod_revision, last) << i;
    last = e.kv.mod_revision;
    EXPECT_EQ(e.type, real[i].first) << i;
    const std::string got =
        e.type == WatchEvent::Type::kPut ? e.kv.key + "=" + e.kv.value : e.kv.key;
    EXPECT_EQ(got, real[i].second) << i;
  }
  EXPECT_EQ((*watcher)->revision(), last);
}

TEST_F(EtcdClientTest, WatchFromACompactedRevisionReadsAgain) {
  Result<int64_t> first = client_->Put(prefix_ + "a", "1");
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(client_->Put(prefix_ + "a", "2").ok());
  ASSERT_TRUE(client_->Put(prefix_ + "b", "3").ok());
  Result<int64_t> last = client_->Put("/unrelated" + prefix_, "x");
  ASSERT_TRUE(last.ok()) << last.status();
  ASSERT_TRUE(client_->Compact(*last).ok());
  Collector c;
  Result<std::unique_ptr<Watcher>> watcher = client_->Watch(prefix_, *first, c.Callback());
  ASSERT_TRUE(watcher.ok()) << watcher.status();
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> lock(c.mu);
    return !c.updates.empty();
  }));
  {
    std::lock_guard<std::mutex> lock(c.mu);
    const WatchUpdate& u = c.updates[0];
    ASSERT_TRUE(u.reset) << "the history was compacted: a full re-read is expected";
    ASSERT_EQ(u.kvs.size(), 2u);
    EXPECT_EQ(u.kvs[0].value, "2");
    EXPECT_EQ(u.kvs[1].value, "3");
    EXPECT_GE(u.revision, *last);
  }
  // And it goes on watching from there.
  ASSERT_TRUE(client_->Put(prefix_ + "c", "4").ok());
  ASSERT_TRUE(WaitFor([&] { return c.event_count() == 1; }));
}

TEST_F(EtcdClientTest, FailsOverFromADeadFirstEndpoint) {
  const std::string dead = "127.0.0.1:" + std::to_string(DeadPort());
  std::shared_ptr<EtcdClient> c = Connect("etcd://" + dead + "," + etcd_->client_address());
  ASSERT_NE(c, nullptr);
  Result<int64_t> put = c->Put(prefix_ + "k", "v");
  ASSERT_TRUE(put.ok()) << put.status();
  // The live endpoint is preferred from now on: the next calls do not pay for the dead one.
  const auto start = Steady::now();
  for (int i = 0; i < 5; ++i) {
    Result<std::optional<KeyValue>> kv = c->Get(prefix_ + "k");
    ASSERT_TRUE(kv.ok()) << kv.status();
  }
  EXPECT_LT(Steady::now() - start, seconds(1));
  TxnRequest t;
  t.compares = {Compare::ModRevision(prefix_ + "k", *put)};
  t.then_ops = {TxnOp::Put(prefix_ + "k", "w")};
  Result<TxnResult> txn = c->Txn(t);
  ASSERT_TRUE(txn.ok()) << txn.status();
  EXPECT_TRUE(txn->succeeded);

  // A transaction starting on the dead endpoint fails over too (not sent there).
  std::shared_ptr<EtcdClient> fresh = Connect("etcd://" + dead + "," + etcd_->client_address());
  t.compares = {Compare::Value(prefix_ + "k", "w")};
  txn = fresh->Txn(t);
  ASSERT_TRUE(txn.ok()) << txn.status();
  EXPECT_TRUE(txn->succeeded);
}

TEST_F(EtcdClientTest, NoEndpointReachableIsUnavailableNamingThem) {
  const std::string a = "127.0.0.1:" + std::to_string(DeadPort());
  const std::string b = "127.0.0.1:" + std::to_string(DeadPort());
  std::shared_ptr<EtcdClient> c = Connect("etcd://" + a + "," + b);
  const auto start = Steady::now();
  Result<int64_t> put = c->Put(prefix_ + "k", "v", 0, milliseconds(800));
  const auto took = Steady::now() - start;
  ASSERT_FALSE(put.ok());
  EXPECT_EQ(put.status().code(), StatusCode::kUnavailable);
  const std::string msg(put.status().message());
  EXPECT_NE(msg.find("etcd unreachable at etcd://" + a + "," + b), std::string::npos) << msg;
  EXPECT_LT(took, milliseconds(800 + 500));
  EXPECT_GE(took, milliseconds(700));  // it kept trying until the deadline
}

TEST_F(EtcdClientTest, MalformedEndpointsAreRejected) {
  Result<std::unique_ptr<EtcdClient>> c = EtcdClient::Create("etcd://localhost");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("has no port"), std::string_view::npos) << c.status();
  c = EtcdClient::Create("localhost:2379");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("etcd://"), std::string_view::npos) << c.status();
}

// ---- with an etcd of its own: stopped, killed, restarted

using EtcdOutageTest = OwnEtcdTest;

TEST_F(EtcdOutageTest, CallsFailWithinTheDeadlineThenSucceedAfterRestart) {
  std::shared_ptr<EtcdClient> c = Connect(etcd_->endpoint());
  ASSERT_TRUE(c->Put(prefix_ + "k", "v").ok());
  ASSERT_TRUE(etcd_->Stop().ok());
  for (int i = 0; i < 3; ++i) {
    const auto start = Steady::now();
    Status s;
    if (i == 0) s = c->Put(prefix_ + "k", "w", 0, milliseconds(1000)).status();
    if (i == 1) s = c->Get(prefix_ + "k", milliseconds(1000)).status();
    if (i == 2) {
      TxnRequest t;
      t.then_ops = {TxnOp::Put(prefix_ + "k", "w")};
      s = c->Txn(t, milliseconds(1000)).status();
    }
    const auto took = Steady::now() - start;
    EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s;
    EXPECT_NE(s.message().find(etcd_->client_address()), std::string_view::npos) << s;
    EXPECT_LT(took, milliseconds(1000 + 500)) << s;
  }
  ASSERT_TRUE(etcd_->Restart().ok());
  // The channel reconnects within its (1 s) reconnect backoff; the call's retries cover it.
  Result<int64_t> put = c->Put(prefix_ + "k", "after");
  ASSERT_TRUE(put.ok()) << put.status();
  Result<std::optional<KeyValue>> kv = c->Get(prefix_ + "k");
  ASSERT_TRUE(kv.ok() && kv->has_value()) << kv.status();
  EXPECT_EQ((*kv)->value, "after");
}

TEST_F(EtcdOutageTest, WatchResumesAfterEtcdRestartsWithoutLossOrDuplicates) {
  std::shared_ptr<EtcdClient> c = Connect(etcd_->endpoint());
  Collector collector;
  Result<std::unique_ptr<Watcher>> watcher = c->Watch(prefix_, 0, collector.Callback());
  ASSERT_TRUE(watcher.ok()) << watcher.status();
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(c->Put(prefix_ + "k", std::to_string(i)).ok());
  ASSERT_TRUE(WaitFor([&] { return collector.event_count() == 10; }));
  ASSERT_TRUE(etcd_->Kill().ok());
  ASSERT_TRUE(etcd_->Restart().ok());
  // Written right after the restart, likely before the watcher is back: it must catch up.
  for (int i = 10; i < 20; ++i) ASSERT_TRUE(c->Put(prefix_ + "k", std::to_string(i)).ok());
  ASSERT_TRUE(WaitFor([&] { return collector.event_count() >= 20; })) << collector.event_count();
  std::this_thread::sleep_for(milliseconds(300));  // nothing extra arrives
  std::lock_guard<std::mutex> lock(collector.mu);
  ASSERT_EQ(collector.events.size(), 20u);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(collector.events[i].kv.value, std::to_string(i)) << i;
}

}  // namespace
}  // namespace shale::cluster
