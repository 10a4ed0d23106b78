"""The quantizer's roundings as Triton device functions, op for op as `cadyq.quant.ops.fake_quant`: division with
IEEE rounding (div_rn) and round half to even built from floor, so results are bit-exact against torch and numpy
(callers compile with FMA contraction off)."""
import triton
import triton.language as tl


@triton.jit
def quantize(x, a, s):
    """round(clamp(x, -a, a) / a * s), round half to even: integers (float32) in [-s, s]."""
    v = tl.math.div_rn(tl.clamp(x, -a, a), a) * s
    r = tl.floor(v)
    frac = v - r
    odd = (r - 2.0 * tl.floor(r * 0.5)) == 1.0
    return r + tl.where((frac > 0.5) | ((frac == 0.5) & odd), 1.0, 0.0)


@triton.jit
def fake_quant(x, a, s):
    """round(clamp(x, -a, a) / a * s) / s * a."""
    return tl.math.div_rn(quantize(x, a, s), s) * a
