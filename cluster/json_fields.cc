#include "cluster/json_fields.h"

namespace shale::cluster::internal {

Result<Json> ParseJsonObject(std::string_view text, std::string_view what, size_t max_bytes) {
  if (text.size() > max_bytes) {
    return Status::Corruption(std::string(what) + ": value of " + std::to_string(text.size()) +
                              " bytes; the limit is " + std::to_string(max_bytes));
  }
  Json json = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return Status::Corruption(std::string(what) + ": not valid JSON");
  if (!json.is_object()) return Status::Corruption(std::string(what) + ": not a JSON object");
  return json;
}

std::string DumpJson(const Json& json) {
  return json.dump(-1, ' ', false, Json::error_handler_t::replace);
}

JsonObject::JsonObject(const Json& object, std::string path, JsonObject* root)
    : object_(object), path_(std::move(path)), root_(root) {}

std::string JsonObject::Path(const std::string& field) const {
  return path_.empty() ? field : path_ + "." + field;
}

void JsonObject::Fail(const std::string& field, const std::string& problem) {
  std::string& error = root_ != nullptr ? root_->error_ : error_;
  if (error.empty()) error = "field '" + Path(field) + "' " + problem;
}

bool JsonObject::failed() const { return root_ != nullptr ? root_->failed() : !error_.empty(); }

void JsonObject::CheckUnknown() {
  for (const auto& [key, value] : object_.items()) {
    if (read_.count(key) == 0) return Fail(key, "is unknown");
  }
}

const Json* JsonObject::Field(const char* name, bool required) {
  read_.insert(name);
  const auto it = object_.find(name);
  if (it == object_.end()) {
    if (required) Fail(name, "is missing");
    return nullptr;
  }
  return &*it;
}

uint64_t JsonObject::Unsigned(const char* name, bool required) {
  const Json* v = Field(name, required);
  if (v == nullptr) return 0;
  if (!v->is_number_unsigned()) {
    Fail(name, "must be a non-negative integer");
    return 0;
  }
  return v->get<uint64_t>();
}

std::string JsonObject::String(const char* name, bool required) {
  const Json* v = Field(name, required);
  if (v == nullptr) return {};
  if (!v->is_string()) {
    Fail(name, "must be a string");
    return {};
  }
  return v->get_ref<const std::string&>();
}

bool JsonObject::Boolean(const char* name, bool required) {
  const Json* v = Field(name, required);
  if (v == nullptr) return false;
  if (!v->is_boolean()) {
    Fail(name, "must be true or false");
    return false;
  }
  return v->get<bool>();
}

const Json* JsonObject::Array(const char* name) {
  const Json* v = Field(name, true);
  if (v == nullptr) return nullptr;
  if (!v->is_array()) {
    Fail(name, "must be an array");
    return nullptr;
  }
  return v;
}

const Json* JsonObject::Object(const char* name, bool required) {
  const Json* v = Field(name, required);
  if (v == nullptr) return nullptr;
  if (!v->is_object()) {
    Fail(name, "must be an object");
    return nullptr;
  }
  return v;
}

Status JsonObject::Finish(std::string_view what) {
  CheckUnknown();
  if (error_.empty()) return Status::Ok();
  return Status::Corruption(std::string(what) + ": " + error_);
}

}  // namespace shale::cluster::internal
