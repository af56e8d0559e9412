// Elementwise work of deq_modules as single passes over CPU float32 tensors (loaded by
// deq_modules/kernels.py; each has a tensor-operation twin that the tests compare it with).
// Every loop is compiled for AVX-512, AVX2 and the baseline where the compiler can (GCC's
// target_clones, the CPU picking at run time), with exp as a polynomial the compiler
// vectorises (Cephes' expf, within 2 float ulps).
//
// madam_step: one Madam step, fused: what deq_modules.optim.Madam's eager step
// does in some 13 passes over the parameter (each a read and a write of a tensor as large as
// the 784 x 1990 input matrix), here in one pass that reads p, grad and the running mean of
// squared gradients once and writes p and that mean once:
//   v    <- beta v + (1 - beta) g^2
//   den  <- sqrt(v / bias_correction) + eps          (floored at `floor` when floor > 0)
//   p    <- clamp(p exp(-lr clamp(g / den, -g_bound, g_bound) sign(p)), -p_max, p_max)
//
// chn_settle / chn_settle_backward: the CHN layer's local equilibrium for a fixed drive
// (deq_modules.hopfield.models.CHN.local_equilibrium), n damped Picard steps per unit,
//   s <- d s + 4 (1 - d) (r - r^2) drive,   r = rho(s) = sigmoid(4 s - 2),
// kept in registers for all n steps (the tensor operations make six passes over the layer per
// step); the backward recomputes the steps of each unit and runs them back (the map is
// elementwise, so each unit's Jacobian is a number).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <vector>

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
#define KERNEL_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define KERNEL_CLONES
#endif

KERNEL_CLONES
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

constexpr int kMaxInner = 64;  // chn_settle's inner steps kept per unit for the backward
constexpr int64_t kBlock = 64;  // units settled together: every inner loop runs over a block

inline float rate(float s) { return 1.0f / (1.0f + exp_poly(2.0f - 4.0f * s)); }

// Blocks of units, the steps in the outer loop and the units of the block in the inner one
// (which the compiler vectorises), so that a block's states stay in the L1 cache.
KERNEL_CLONES
void settle_range(const float* __restrict s0, const float* __restrict drive,
                  float* __restrict out, int64_t begin, int64_t end, int n, float d) {
  const float gain = 4.0f * (1.0f - d);
  float s[kBlock];
  for (int64_t i0 = begin; i0 < end; i0 += kBlock) {
    const int64_t m = std::min(kBlock, end - i0);
    const float* dr = drive + i0;
    for (int64_t j = 0; j < m; ++j) s[j] = s0[i0 + j];
    for (int t = 0; t < n; ++t) {
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) {
        const float r = rate(s[j]);
        s[j] = d * s[j] + gain * (r - r * r) * dr[j];
      }
    }
    for (int64_t j = 0; j < m; ++j) out[i0 + j] = s[j];
  }
}

KERNEL_CLONES
void settle_backward_range(const float* __restrict s0, const float* __restrict drive,
                           const float* __restrict grad, float* __restrict grad_s,
                           float* __restrict grad_drive, int64_t begin, int64_t end, int n,
                           float d) {
  const float gain = 4.0f * (1.0f - d);
  float s[kBlock], gs[kBlock], gd[kBlock];
  static thread_local float r_at[kMaxInner][kBlock];  // each step's rates, 16 KB
  for (int64_t i0 = begin; i0 < end; i0 += kBlock) {
    const int64_t m = std::min(kBlock, end - i0);
    const float* dr = drive + i0;
    for (int64_t j = 0; j < m; ++j) s[j] = s0[i0 + j];
    for (int t = 0; t < n; ++t) {
      float* r_t = r_at[t];
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) {
        const float r = rate(s[j]);
        r_t[j] = r;
        s[j] = d * s[j] + gain * (r - r * r) * dr[j];
      }
    }
    for (int64_t j = 0; j < m; ++j) {
      gs[j] = grad[i0 + j];
      gd[j] = 0.0f;
    }
    for (int t = n - 1; t >= 0; --t) {
      const float* r_t = r_at[t];
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) {
        const float r = r_t[j];
        gd[j] += gs[j] * gain * (r - r * r);
        // d s_{t+1} / d s_t = d + gain * drive * (1 - 2 r) * rho'(s_t), rho' = 4 r (1 - r)
        gs[j] *= d + gain * dr[j] * (1.0f - 2.0f * r) * 4.0f * r * (1.0f - r);
      }
    }
    for (int64_t j = 0; j < m; ++j) {
      grad_s[i0 + j] = gs[j];
      grad_drive[i0 + j] = gd[j];
    }
  }
}

void check_float_cpu(std::initializer_list<torch::Tensor> tensors, const char* what) {
  const auto n = tensors.begin()->numel();
  for (const auto& t : tensors)
    TORCH_CHECK(t.is_contiguous() && t.scalar_type() == torch::kFloat && t.device().is_cpu() &&
                    t.numel() == n,
                what, " needs contiguous float32 CPU tensors of one size");
}

}  // namespace

torch::Tensor chn_settle(torch::Tensor s, torch::Tensor drive, int64_t n, double d) {
  check_float_cpu({s, drive}, "chn_settle");
  TORCH_CHECK(n >= 0, "chn_settle: n must be >= 0");
  auto out = torch::empty_like(s);
  const float* S = s.data_ptr<float>();
  const float* D = drive.data_ptr<float>();
  float* O = out.data_ptr<float>();
  at::parallel_for(0, s.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
    settle_range(S, D, O, begin, end, static_cast<int>(n), static_cast<float>(d));
  });
  return out;
}

std::vector<torch::Tensor> chn_settle_backward(torch::Tensor s, torch::Tensor drive,
                                               torch::Tensor grad, int64_t n, double d) {
  check_float_cpu({s, drive, grad}, "chn_settle_backward");
  TORCH_CHECK(n >= 0 && n <= kMaxInner, "chn_settle_backward: n must be in [0, ", kMaxInner,
              "]");
  auto grad_s = torch::empty_like(s), grad_drive = torch::empty_like(s);
  const float* S = s.data_ptr<float>();
  const float* D = drive.data_ptr<float>();
  const float* G = grad.data_ptr<float>();
  float* GS = grad_s.data_ptr<float>();
  float* GD = grad_drive.data_ptr<float>();
  at::parallel_for(0, s.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
    settle_backward_range(S, D, G, GS, GD, begin, end, static_cast<int>(n),
                          static_cast<float>(d));
  });
  return {grad_s, grad_drive};
}

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
  module.def("chn_settle", &chn_settle, "The CHN layer's n inner steps for a fixed drive");
  module.def("chn_settle_backward", &chn_settle_backward,
             "Gradients of chn_settle into its start and its drive");
}
