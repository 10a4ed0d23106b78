// TensorRT engines (`cadyq engine`), built only with -DCADYQ_WITH_TENSORRT=ON (full TensorRT >= 10 and
// the CUDA runtime). NOT BUILT OR RUN IN CI: no TensorRT headers there (see README, "Deploy on TensorRT").
//
// The engine's JSON sidecar (<engine>.json, written by `cadyq engine`) gives the model metadata, the
// tile and the batch profile. CADyQSelect must be inside the engine: the standard-op function body
// (the default build) or the AOT plugin (namespace cadyq_aot, its kernel embedded in the engine). The
// IPluginV3 plugin of `cadyq engine --plugin` is Python and cannot run here. libnvinfer_plugin's
// plugins are registered, and Options::plugin_libraries are loaded into the plugin registry first.
#include <NvInfer.h>
#include <NvInferPlugin.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <mutex>

#include "backend.hpp"
#include "json.hpp"

namespace cadyq::detail {

namespace {

class Logger final : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kERROR) last_error = msg;
    if (severity <= Severity::kWARNING) std::fprintf(stderr, "tensorrt: %s\n", msg);
  }
  std::string last_error;
};

void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw Error(ErrorCode::Runtime, std::string(what) + " failed: " + cudaGetErrorString(status));
}

struct DeviceBuffer {
  void* ptr = nullptr;
  std::size_t bytes = 0;
  void reserve(std::size_t n) {
    if (n <= bytes) return;
    if (ptr) cudaFree(ptr);
    ptr = nullptr;
    bytes = 0;
    check_cuda(cudaMalloc(&ptr, n), "cudaMalloc");
    bytes = n;
  }
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
};

std::string read_file(const std::string& path, ErrorCode code, const std::string& what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(code, path + ": " + what);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

class TensorRTBackend final : public Backend {
 public:
  TensorRTBackend(const std::string& path, const Options& options) : path_(path) {
    const std::string blob = read_file(path, ErrorCode::Model, "no such engine file; build one with `cadyq engine`");
    const std::string sidecar_text = read_file(path + ".json", ErrorCode::Model,
                                               "the engine's sidecar is missing; it is written by `cadyq engine` next to the engine");
    try {
      const json::Value sc = json::parse(sidecar_text);
      info_ = model_info_from(sc.at("model"));
      tile_ = static_cast<int>(sc.at("tile").as_int());
      max_batch_ = static_cast<int>(sc.at("batch").as_array().at(2).as_int());
      const json::Value* ns = sc.find("plugin_namespace");
      if (ns && !ns->is_null() && ns->as_string() == "cadyq")
        throw Error(ErrorCode::Model, path + " uses the Python CADyQSelect plugin (`cadyq engine --plugin`), which only a Python "
                                             "process can run; rebuild the engine without --plugin, or with the AOT plugin");
      const json::Value* bytes = sc.find("engine_bytes");
      if (bytes && static_cast<std::size_t>(bytes->as_int()) != blob.size())
        throw Error(ErrorCode::Model, path + " does not match its sidecar (size); rebuild it with `cadyq engine`");
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw Error(ErrorCode::Model, path + ".json: not a cadyq engine sidecar (" + std::string(e.what()) + ")");
    }
    const auto colon = options.device.find(':');
    const std::string kind = options.device.substr(0, colon);
    if (kind == "cpu") throw Error(ErrorCode::InvalidArgument, "TensorRT engines run on CUDA GPUs; use --device cuda");
    device_index_ = colon == std::string::npos ? 0 : std::atoi(options.device.c_str() + colon + 1);
    check_cuda(cudaSetDevice(device_index_), "cudaSetDevice");
    initLibNvInferPlugins(&logger_, "");
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw Error(ErrorCode::Model, "cannot create the TensorRT runtime (" + logger_.last_error + ")");
    for (const auto& lib : options.plugin_libraries)
      if (!runtime_->getPluginRegistry().loadLibrary(lib.c_str()))
        throw Error(ErrorCode::Model, lib + ": cannot load this TensorRT plugin library (" + logger_.last_error + ")");
    engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine_)
      throw Error(ErrorCode::Model, path + ": TensorRT cannot load this engine (" + logger_.last_error +
                                        "); engines run only with the TensorRT version and GPU they were built for");
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw Error(ErrorCode::Model, path + ": cannot create an execution context (" + logger_.last_error + ")");
    check_cuda(cudaStreamCreate(&stream_), "cudaStreamCreate");
  }

  ~TensorRTBackend() override {
    if (stream_) cudaStreamDestroy(stream_);
  }

  const ModelInfo& info() const override { return info_; }
  std::string name() const override { return "tensorrt"; }
  std::string device() const override { return "cuda:" + std::to_string(device_index_); }
  std::string description() const override {
    return info_.backbone + " x" + std::to_string(info_.scale) + " " + info_.method + ", TensorRT engine, " + device();
  }
  int max_batch() const override { return max_batch_; }
  int fixed_tile() const override { return tile_; }
  std::pair<int, int> tile_range() const override { return {tile_, tile_}; }

  void run(const float* tiles, int n, int h, int w, float* sr, float* bits) override {
    const int s = info_.scale, L = info_.n_layers();
    const std::size_t in_bytes = sizeof(float) * static_cast<std::size_t>(n) * 3 * h * w;
    const std::size_t sr_bytes = in_bytes * static_cast<std::size_t>(s) * s;
    const std::size_t bits_bytes = sizeof(float) * static_cast<std::size_t>(n) * (L > 0 ? L : 1);
    in_.reserve(in_bytes);
    sr_.reserve(sr_bytes);
    bits_.reserve(bits_bytes);
    check_cuda(cudaMemcpyAsync(in_.ptr, tiles, in_bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
    if (!context_->setInputShape("lr", nvinfer1::Dims4{n, 3, h, w}) || !context_->setTensorAddress("lr", in_.ptr) ||
        !context_->setTensorAddress("sr", sr_.ptr) || !context_->setTensorAddress("bits", bits_.ptr))
      throw Error(ErrorCode::Runtime, path_ + ": the engine does not take " + std::to_string(n) + " tiles of " +
                                          std::to_string(h) + "x" + std::to_string(w) + " (" + logger_.last_error + ")");
    if (!context_->enqueueV3(stream_)) throw Error(ErrorCode::Runtime, path_ + ": inference failed (" + logger_.last_error + ")");
    check_cuda(cudaMemcpyAsync(sr, sr_.ptr, sr_bytes, cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync");
    if (L > 0) check_cuda(cudaMemcpyAsync(bits, bits_.ptr, bits_bytes, cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync");
    check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }

 private:
  std::string path_;
  ModelInfo info_;
  int tile_ = 0, max_batch_ = 0, device_index_ = 0;
  Logger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  cudaStream_t stream_ = nullptr;
  DeviceBuffer in_, sr_, bits_;
};

}  // namespace

std::unique_ptr<Backend> open_tensorrt(const std::string& path, const Options& options) {
  return std::make_unique<TensorRTBackend>(path, options);
}

}  // namespace cadyq::detail
