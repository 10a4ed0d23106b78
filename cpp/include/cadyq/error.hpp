// cadyq::Error: what the library throws. Every message says what went wrong and what to do.
#pragma once

#include <stdexcept>
#include <string>

#include "cadyq/export.h"

namespace cadyq {

// The same codes as the C API's status values (cadyq.h).
enum class ErrorCode : int {
  InvalidArgument = 1,  // a bad option (tile, overlap, batch, protocol, device) or argument
  Model = 2,            // the model file is missing, not a cadyq package/engine, or cannot run here
  Image = 3,            // an image cannot be read, written, or is not usable (empty, too large, format)
  Runtime = 4,          // the model failed while running (NaN/Inf output, wrong shapes, device errors)
  OutOfMemory = 5,      // an allocation failed
};

class CADYQ_API Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace cadyq
