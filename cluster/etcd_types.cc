#include "cluster/etcd_types.h"

#include <utility>

namespace shale::cluster {

Compare Compare::ModRevision(std::string key, int64_t revision, Op op) {
  return Compare{Target::kModRevision, op, std::move(key), revision, {}};
}
Compare Compare::Version(std::string key, int64_t version, Op op) {
  return Compare{Target::kVersion, op, std::move(key), version, {}};
}
Compare Compare::CreateRevision(std::string key, int64_t revision, Op op) {
  return Compare{Target::kCreateRevision, op, std::move(key), revision, {}};
}
Compare Compare::Value(std::string key, std::string value, Op op) {
  return Compare{Target::kValue, op, std::move(key), 0, std::move(value)};
}
Compare Compare::Lease(std::string key, int64_t lease, Op op) {
  return Compare{Target::kLease, op, std::move(key), lease, {}};
}

TxnOp TxnOp::Get(std::string key) { return TxnOp{Type::kRange, std::move(key), {}, 0, false}; }
TxnOp TxnOp::GetPrefix(std::string prefix) {
  return TxnOp{Type::kRange, std::move(prefix), {}, 0, true};
}
TxnOp TxnOp::Put(std::string key, std::string value, int64_t lease) {
  return TxnOp{Type::kPut, std::move(key), std::move(value), lease, false};
}
TxnOp TxnOp::Delete(std::string key) { return TxnOp{Type::kDelete, std::move(key), {}, 0, false}; }
TxnOp TxnOp::DeletePrefix(std::string prefix) {
  return TxnOp{Type::kDelete, std::move(prefix), {}, 0, true};
}

std::string PrefixEnd(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty()) {
    auto& last = reinterpret_cast<unsigned char&>(end.back());
    if (last < 0xff) {
      ++last;
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // no upper bound: every key
}

}  // namespace shale::cluster
