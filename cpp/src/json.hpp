// A small JSON reader (metadata of packages and engine sidecars) and string escaping for writers.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace cadyq::json {

struct Value {
  enum class Type { Null, Bool, Number, String, Array, Object } type = Type::Null;
  bool boolean = false;
  double number = 0.0;
  std::string string;
  std::vector<Value> array;
  std::vector<std::pair<std::string, Value>> object;

  bool is_null() const { return type == Type::Null; }
  const Value* find(const std::string& key) const;  // nullptr if absent or not an object
  const Value& at(const std::string& key) const;    // std::runtime_error if absent
  double as_number() const;                          // std::runtime_error on a type mismatch
  long long as_int() const;
  const std::string& as_string() const;
  const std::vector<Value>& as_array() const;
};

Value parse(const std::string& text);  // std::runtime_error with the offset of the problem
std::string quote(const std::string& text);  // "text" with JSON escapes

}  // namespace cadyq::json

#include "cadyq/model_info.hpp"

namespace cadyq::detail {

ModelInfo model_info_from(const json::Value& value);  // ModelInfo.to_dict(); Error(Model) if malformed

}  // namespace cadyq::detail
