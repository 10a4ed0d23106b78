// AOTInductor packages (`cadyq export --format aoti`): the only file of libcadyq that includes torch.
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <unordered_map>

#include "backend.hpp"
#include "json.hpp"

namespace cadyq::detail {

namespace {

constexpr int kPackageFormat = 1;  // cadyq.export.aoti.AOTI_FORMAT

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

std::string torch_message(const std::exception& e) {
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) return first_line(c->what_without_backtrace());
  return first_line(e.what());
}

// The CPU features an AOTI_CPU_ISA value needs, by their /proc/cpuinfo names.
std::set<std::string> missing_cpu_features(const std::string& isa) {
  static const std::unordered_map<std::string, std::vector<std::string>> needs = {
      {"AVX2", {"avx2", "fma", "f16c"}},
      {"AVX512", {"avx512f", "avx512dq", "avx512vl", "avx512bw", "fma"}},
      {"AVX512_VNNI", {"avx512_vnni"}},
      {"AMX_TILE", {"amx_tile", "amx_bf16", "amx_int8"}},
  };
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  std::set<std::string> have;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("flags", 0) == 0) {
      std::istringstream words(line.substr(line.find(':') + 1));
      for (std::string w; words >> w;) have.insert(w);
      break;
    }
  }
  std::set<std::string> missing;
  if (have.empty()) return missing;  // not Linux/x86: let the loader decide
  std::istringstream tokens(isa);
  for (std::string t; tokens >> t;) {
    const auto it = needs.find(t);
    if (it == needs.end()) continue;
    for (const auto& f : it->second)
      if (!have.count(f)) missing.insert(f);
  }
  return missing;
}

class AotiBackend final : public Backend {
 public:
  AotiBackend(const std::string& path, const Options& options) : path_(path) {
    if (!std::ifstream(path).good())
      throw Error(ErrorCode::Model, path + ": no such model package; export one with `cadyq export --format aoti -o " + path + "`");
    std::unordered_map<std::string, std::string> meta;
    try {
      meta = torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(path, "model");
    } catch (const std::exception& e) {
      throw Error(ErrorCode::Model, path + ": not a readable AOTInductor package (" + torch_message(e) +
                                        "); re-export it with `cadyq export --format aoti`");
    }
    const auto get = [&](const std::string& key) -> const std::string& {
      const auto it = meta.find(key);
      if (it == meta.end())
        throw Error(ErrorCode::Model, path + ": an AOTInductor package without cadyq metadata (" + key +
                                          "); export the model with `cadyq export --format aoti`");
      return it->second;
    };
    if (std::atoi(get("cadyq.format").c_str()) > kPackageFormat)
      throw Error(ErrorCode::Model, path + ": written by a newer cadyq (package format " + get("cadyq.format") + "); upgrade libcadyq");
    info_ = ModelInfo::from_json(get("cadyq.info"));
    try {
      const json::Value exp = json::parse(get("cadyq.export"));
      program_ = exp.at("program").as_string();
      built_for_ = exp.at("device").as_string();
      max_batch_ = static_cast<int>(exp.at("batch").as_array().at(1).as_int());
      const auto& range = exp.at("tile_range").as_array();
      range_ = {static_cast<int>(range.at(0).as_int()), static_cast<int>(range.at(1).as_int())};
      const json::Value* tile = exp.find("tile");
      fixed_tile_ = tile && !tile->is_null() ? static_cast<int>(tile->as_int()) : 0;
    } catch (const std::exception& e) {
      throw Error(ErrorCode::Model, path + ": malformed cadyq.export metadata (" + std::string(e.what()) +
                                        "); re-export it with `cadyq export --format aoti`");
    }
    const std::string want = options.device == "auto" ? built_for_ : options.device.substr(0, options.device.find(':'));
    if (want != "cpu" && want != "cuda")
      throw Error(ErrorCode::InvalidArgument, "unknown device '" + options.device + "'; use auto, cpu, cuda or cuda:N");
    if (want != built_for_)
      throw Error(ErrorCode::Model, path + " was compiled for " + built_for_ + ", not " + want +
                                        "; re-export it with `cadyq export --format aoti --device " + want + "` or use --device " + built_for_);
    c10::DeviceIndex index = -1;
    if (want == "cuda") {
      if (!at::hasCUDA())
        throw Error(ErrorCode::Model, path + " was compiled for cuda, but this libtorch has no CUDA GPU (a CPU build, or no GPU)");
      const auto colon = options.device.find(':');
      if (colon != std::string::npos) index = static_cast<c10::DeviceIndex>(std::atoi(options.device.c_str() + colon + 1));
      device_ = c10::Device(c10::DeviceType::CUDA, index < 0 ? 0 : index);
    } else {
      const auto isa = meta.count("AOTI_CPU_ISA") ? meta.at("AOTI_CPU_ISA") : std::string();
      const auto missing = missing_cpu_features(isa);
      if (!missing.empty()) {
        std::string list;
        for (const auto& f : missing) list += (list.empty() ? "" : " ") + f;
        throw Error(ErrorCode::Model, path + " was compiled for " + isa + " CPUs and this CPU lacks " + list +
                                          "; compile the package on (a CPU like) this machine");
      }
    }
    if (options.threads > 0) at::set_num_threads(options.threads);
    try {
      loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path, "model", false, 1, index);
    } catch (const std::exception& e) {
      throw Error(ErrorCode::Model, path + ": cannot load the package (" + torch_message(e) +
                                        "); it may have been compiled by another torch version");
    }
    description_ = info_.backbone + " x" + std::to_string(info_.scale) + " " + info_.method + ", " + program_ +
                   " program (AOTInductor), " + device() + (isa_note(meta).empty() ? "" : " " + isa_note(meta));
  }

  const ModelInfo& info() const override { return info_; }
  std::string name() const override { return "aoti"; }
  std::string device() const override { return device_.str(); }
  std::string description() const override { return description_; }
  int max_batch() const override { return max_batch_; }
  int fixed_tile() const override { return fixed_tile_; }
  std::pair<int, int> tile_range() const override { return range_; }

  void run(const float* tiles, int n, int h, int w, float* sr, float* bits) override {
    const int s = info_.scale, L = info_.n_layers();
    try {
      at::Tensor x = at::from_blob(const_cast<float*>(tiles), {n, 3, h, w}, at::TensorOptions().dtype(at::kFloat));
      if (device_.is_cuda()) x = x.to(device_);
      std::vector<at::Tensor> out = loader_->run({x});
      if (out.size() != 2) throw Error(ErrorCode::Runtime, path_ + ": the package returned " + std::to_string(out.size()) + " outputs, not (sr, bits)");
      const at::Tensor y = out[0].to(at::kCPU, at::kFloat).contiguous();
      const at::Tensor b = out[1].to(at::kCPU, at::kFloat).contiguous();
      if (y.dim() != 4 || y.size(0) != n || y.size(1) != 3 || y.size(2) != h * s || y.size(3) != w * s)
        throw Error(ErrorCode::Runtime, path_ + ": SR tiles of shape " + shape(y) + ", expected [" + std::to_string(n) + ", 3, " +
                                            std::to_string(h * s) + ", " + std::to_string(w * s) + "]");
      if (b.dim() != 2 || b.size(0) != n || b.size(1) != L)
        throw Error(ErrorCode::Runtime, path_ + ": bits of shape " + shape(b) + ", expected [" + std::to_string(n) + ", " +
                                            std::to_string(L) + "]");
      std::memcpy(sr, y.data_ptr<float>(), sizeof(float) * static_cast<std::size_t>(y.numel()));
      std::memcpy(bits, b.data_ptr<float>(), sizeof(float) * static_cast<std::size_t>(b.numel()));
    } catch (const Error&) {
      throw;
    } catch (const std::bad_alloc&) {
      throw;
    } catch (const std::exception& e) {
      throw Error(ErrorCode::Runtime, path_ + ": the model failed on a batch of " + std::to_string(n) + " " + std::to_string(h) +
                                          "x" + std::to_string(w) + " tiles (" + torch_message(e) + ")");
    }
  }

 private:
  static std::string shape(const at::Tensor& t) {
    std::string s = "[";
    for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
    return s + "]";
  }
  static std::string isa_note(const std::unordered_map<std::string, std::string>& meta) {
    const auto it = meta.find("AOTI_CPU_ISA");
    return it == meta.end() || it->second.empty() ? "" : "(" + it->second + ")";
  }

  std::string path_;
  ModelInfo info_;
  std::string program_, built_for_, description_;
  int max_batch_ = 0, fixed_tile_ = 0;
  std::pair<int, int> range_{1, 1 << 30};
  c10::Device device_{c10::DeviceType::CPU};
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
};

}  // namespace

std::unique_ptr<Backend> open_aoti(const std::string& path, const Options& options) {
  return std::make_unique<AotiBackend>(path, options);
}

}  // namespace cadyq::detail
