// Built when -DCADYQ_WITH_TENSORRT=OFF (the default): engines are refused with what to do.
#include "backend.hpp"

namespace cadyq::detail {

std::unique_ptr<Backend> open_tensorrt(const std::string& path, const Options&) {
  throw Error(ErrorCode::Model, path + ": this libcadyq was built without TensorRT; rebuild it with -DCADYQ_WITH_TENSORRT=ON "
                                       "where TensorRT's headers and libraries are installed, or export an AOTInductor "
                                       "package (`cadyq export --format aoti`)");
}

}  // namespace cadyq::detail
