// Plain values of etcd's v3 API as EtcdClient takes and returns them: no protobuf types leak out
// of cluster/. Keys and values are byte strings. Revisions are etcd's store revisions (int64,
// > 0 once anything was written); 0 means "none" where a field is optional.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace shale::cluster {

// A timeout of zero means the client's default (EtcdClientOptions::call_timeout).
using Timeout = std::chrono::milliseconds;
inline constexpr Timeout kDefaultTimeout{0};

struct KeyValue {
  std::string key;
  std::string value;
  int64_t create_revision = 0;  // revision of the key's creation
  int64_t mod_revision = 0;     // revision of its last change
  int64_t version = 0;          // changes since creation (1 after the first put)
  int64_t lease = 0;            // lease the key is attached to, 0 for none
};

struct RangeOptions {
  bool prefix = false;     // every key starting with the given key
  int64_t limit = 0;       // at most this many keys (0: no limit)
  int64_t revision = 0;    // read at this revision (0: the latest)
  bool keys_only = false;  // values left empty
  bool count_only = false;
};

struct RangeResult {
  std::vector<KeyValue> kvs;  // in key order
  bool more = false;          // more keys matched than `limit`
  int64_t count = 0;          // keys in the range (regardless of limit)
  int64_t revision = 0;       // the store revision the read saw
};

// One condition of a transaction; all must hold for the `then` branch to run.
struct Compare {
  enum class Target { kVersion, kCreateRevision, kModRevision, kValue, kLease };
  enum class Op { kEqual, kNotEqual, kGreater, kLess };
  Target target = Target::kModRevision;
  Op op = Op::kEqual;
  std::string key;
  int64_t number = 0;  // for every target except kValue
  std::string value;   // for kValue

  // mod_revision(key) == revision; 0 means "the key does not exist".
  static Compare ModRevision(std::string key, int64_t revision, Op op = Op::kEqual);
  // version(key) == version; 0 means "the key does not exist".
  static Compare Version(std::string key, int64_t version, Op op = Op::kEqual);
  static Compare CreateRevision(std::string key, int64_t revision, Op op = Op::kEqual);
  static Compare Value(std::string key, std::string value, Op op = Op::kEqual);
  static Compare Lease(std::string key, int64_t lease, Op op = Op::kEqual);
};

// One operation of a transaction branch.
struct TxnOp {
  enum class Type { kRange, kPut, kDelete };
  Type type = Type::kRange;
  std::string key;
  std::string value;    // kPut
  int64_t lease = 0;    // kPut
  bool prefix = false;  // kRange, kDelete

  static TxnOp Get(std::string key);
  static TxnOp GetPrefix(std::string prefix);
  static TxnOp Put(std::string key, std::string value, int64_t lease = 0);
  static TxnOp Delete(std::string key);
  static TxnOp DeletePrefix(std::string prefix);
};

struct TxnRequest {
  std::vector<Compare> compares;
  std::vector<TxnOp> then_ops;  // run when every compare holds
  std::vector<TxnOp> else_ops;  // run otherwise
};

// The result of one TxnOp of the branch that ran, in order.
struct TxnOpResult {
  TxnOp::Type type = TxnOp::Type::kRange;
  RangeResult range;    // kRange
  int64_t deleted = 0;  // kDelete
};

struct TxnResult {
  bool succeeded = false;  // the `then` branch ran
  int64_t revision = 0;    // the store revision after the transaction
  std::vector<TxnOpResult> results;
};

struct LeaseGrant {
  int64_t id = 0;
  std::chrono::seconds ttl{0};  // as granted (etcd raises a TTL below its minimum)
};

// A change seen by a watch.
struct WatchEvent {
  enum class Type { kPut, kDelete };
  Type type = Type::kPut;
  KeyValue kv;  // for kDelete: the key, and mod_revision = the deletion's revision
};

// What a watch callback receives.
struct WatchUpdate {
  // True: `kvs` holds every key under the prefix at `revision`; forget what was known before
  // (the first update of a watch started at revision 0, and after the history it needed was
  // compacted away). False: `events`, in revision order, follow the previous update.
  bool reset = false;
  std::vector<KeyValue> kvs;
  std::vector<WatchEvent> events;
  int64_t revision = 0;  // the watcher has seen everything up to this revision
};

// The smallest key greater than every key that starts with `prefix` ("\0" for an empty prefix,
// which etcd reads as "every key").
std::string PrefixEnd(const std::string& prefix);

}  // namespace shale::cluster
