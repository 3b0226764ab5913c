// Result<T>: a value or an error Status. Never holds an OK status without a value.
#pragma once

#include <optional>
#include <utility>

#include "engine/common/assert.h"
#include "engine/common/status.h"

namespace shale {

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}         // NOLINT(google-explicit-constructor)
  Result(Status status) : status_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    SHALE_CHECK(!status_.ok(), "Result constructed from an OK status without a value");
  }

  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }
  Status TakeStatus() { return std::move(status_); }

  T& value() & {
    SHALE_CHECK(ok(), "Result::value() on error: ", status_.ToString());
    return *value_;
  }
  const T& value() const& {
    SHALE_CHECK(ok(), "Result::value() on error: ", status_.ToString());
    return *value_;
  }
  T&& value() && {
    SHALE_CHECK(ok(), "Result::value() on error: ", status_.ToString());
    return std::move(*value_);
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace shale

#define SHALE_CONCAT_INNER_(a, b) a##b
#define SHALE_CONCAT_(a, b) SHALE_CONCAT_INNER_(a, b)
#define SHALE_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.TakeStatus();            \
  lhs = std::move(tmp).value()
// SHALE_ASSIGN_OR_RETURN(auto x, Foo()); returns Foo()'s error from the enclosing function.
#define SHALE_ASSIGN_OR_RETURN(lhs, expr) \
  SHALE_ASSIGN_OR_RETURN_IMPL_(SHALE_CONCAT_(shale_result_, __LINE__), lhs, expr)
