// One Madam step over a float32 CPU tensor, fused: what deq_modules.optim.Madam's eager step
// does in some 13 passes over the parameter (each a read and a write of a tensor as large as
// the 784 x 1990 input matrix), here in one pass that reads p, grad and the running mean of
// squared gradients once and writes p and that mean once:
//   v    <- beta v + (1 - beta) g^2
//   den  <- sqrt(v / bias_correction) + eps          (floored at `floor` when floor > 0)
//   p    <- clamp(p exp(-lr clamp(g / den, -g_bound, g_bound) sign(p)), -p_max, p_max)
// The exponential is a polynomial (Cephes' expf, within 2 float ulps) that the compiler
// vectorises; the loop is compiled for AVX-512, AVX2 and the baseline where the compiler can
// (GCC's target_clones), the CPU picking at run time.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

inline float exp_poly(float x) {
  // Cephes expf: x = n ln2 + r, |r| <= ln2 / 2, exp(r) by a degree-7 polynomial, times 2^n.
  x = x > 88.3762626647949f ? 88.3762626647949f : x;
  x = x < -87.3365478515625f ? -87.3365478515625f : x;
  const float fx = x * 1.44269504088896341f;
  const float n = static_cast<float>(static_cast<int32_t>(fx + (fx >= 0.f ? 0.5f : -0.5f)));
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float y = 1.9875691500E-4f;
  y = y * r + 1.3981999507E-3f;
  y = y * r + 8.3334519073E-3f;
  y = y * r + 4.1665795894E-2f;
  y = y * r + 1.6666665459E-1f;
  y = y * r + 5.0000001201E-1f;
  y = y * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MADAM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MADAM_CLONES
#endif

MADAM_CLONES
void madam_range(float* __restrict p, const float* __restrict g, float* __restrict v,
                 int64_t begin, int64_t end, float lr, float beta, float one_minus_beta,
                 float bias_correction, float eps, float floor, float g_bound, float p_max) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    const float gi = g[i];
    const float vi = beta * v[i] + one_minus_beta * gi * gi;
    v[i] = vi;
    float den = std::sqrt(vi / bias_correction) + eps;
    den = den < floor ? floor : den;
    float gn = gi / den;
    gn = gn > g_bound ? g_bound : (gn < -g_bound ? -g_bound : gn);
    const float pi = p[i];
    const float sign = pi > 0.f ? 1.f : (pi < 0.f ? -1.f : 0.f);
    float q = pi * exp_poly(-lr * gn * sign);
    q = q > p_max ? p_max : (q < -p_max ? -p_max : q);
    p[i] = q;
  }
}

}  // namespace

void madam_step(torch::Tensor p, torch::Tensor grad, torch::Tensor exp_avg_sq, double lr,
                double beta, double bias_correction, double eps, double floor, double g_bound,
                double p_max) {
  for (const auto& t : {p, grad, exp_avg_sq})
    TORCH_CHECK(t.is_contiguous() && t.scalar_type() == torch::kFloat && t.device().is_cpu(),
                "fused Madam needs contiguous float32 CPU tensors");
  TORCH_CHECK(grad.numel() == p.numel() && exp_avg_sq.numel() == p.numel(),
              "fused Madam: p, grad and exp_avg_sq differ in size");
  float* P = p.data_ptr<float>();
  const float* G = grad.data_ptr<float>();
  float* V = exp_avg_sq.data_ptr<float>();
  // the scalars as the tensor operations round them: each a float32 of the double
  at::parallel_for(0, p.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
    madam_range(P, G, V, begin, end, static_cast<float>(lr), static_cast<float>(beta),
                static_cast<float>(1.0 - beta), static_cast<float>(bias_correction),
                static_cast<float>(eps), static_cast<float>(floor), static_cast<float>(g_bound),
                static_cast<float>(p_max));
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("madam_step", &madam_step, "One fused Madam step, in place (CPU float32)");
}
