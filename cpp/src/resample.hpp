// Bicubic upsampling by an integer factor, as torch.nn.functional.interpolate(mode="bicubic",
// align_corners=False, scale_factor=s) computes it on the CPU (A = -0.75, clamped borders): the
// Python runtime upscales alpha channels with it.
#pragma once

#include <vector>

namespace cadyq::detail {

std::vector<float> upsample_bicubic(const std::vector<float>& src, int height, int width, int scale);

}  // namespace cadyq::detail
