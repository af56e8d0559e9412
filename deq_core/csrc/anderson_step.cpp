// One iteration of deq_core's safeguarded Anderson acceleration, fused: after fx = f(x), for
// each sample, store the pair, update its Gram matrix by one row, take the residual, track the
// returned point and the anchor point, solve the small regularised system and write the next
// x. It computes what deq_core.solvers.AndersonStep computes, in any of its variants (to float
// rounding: the Gram matrix is updated incrementally and solved in float64), reading each
// history row once instead of in some 65 separate tensor operations. CPU, float32, contiguous
// tensors. The variant is three flags, all false for ours:
//   absolute_tikhonov  the regulariser is lam itself, not lam * mean(diag(gram)) + tiny;
//   safeguard_before   every evaluated point becomes the anchor, and the mix is taken only
//                      where the linear model's predicted residual |sum_i alpha_i g_i| is no
//                      larger than the newest |g_k| (else the plain step f(x_k));
//   return_last        best_fx / best_res are the newest image and residual, not the best.
#include <torch/extension.h>

#include <algorithm>
#include <cmath>

namespace {
constexpr int kMaxM = 16;
}

void anderson_step(torch::Tensor x, torch::Tensor fx, torch::Tensor F, torch::Tensor G,
                   torch::Tensor gram, torch::Tensor res, torch::Tensor best_fx,
                   torch::Tensor best_res, torch::Tensor anchor_slot, torch::Tensor anchor_res,
                   torch::Tensor was_mixed, int64_t n, double lam, double tiny, double eps,
                   bool absolute_tikhonov, bool safeguard_before, bool return_last) {
  const int64_t B = x.size(0), D = x.size(1), m = F.size(1);
  TORCH_CHECK(m <= kMaxM, "fused Anderson supports m <= ", kMaxM, ", got ", m);
  for (const auto& t : {x, fx, F, G, res, best_fx, best_res, anchor_res})
    TORCH_CHECK(t.is_contiguous() && t.scalar_type() == torch::kFloat && t.device().is_cpu(),
                "fused Anderson needs contiguous float32 CPU tensors");
  TORCH_CHECK(gram.is_contiguous() && gram.scalar_type() == torch::kDouble, "gram: float64");
  float* X = x.data_ptr<float>();
  const float* FX = fx.data_ptr<float>();
  float* Fp = F.data_ptr<float>();
  float* Gp = G.data_ptr<float>();
  double* GR = gram.data_ptr<double>();
  float* RES = res.data_ptr<float>();
  float* BF = best_fx.data_ptr<float>();
  float* BR = best_res.data_ptr<float>();
  int64_t* AS = anchor_slot.data_ptr<int64_t>();
  float* AR = anchor_res.data_ptr<float>();
  bool* WM = was_mixed.data_ptr<bool>();
  const int64_t slot = n % m, k = std::min<int64_t>(n + 1, m);
  for (int64_t b = 0; b < B; ++b) {
    const float* xb = X + b * D;
    const float* fb = FX + b * D;
    float* Fs = Fp + (b * m + slot) * D;
    float* Gs = Gp + (b * m + slot) * D;
    float gg = 0.f, ff = 0.f;
    if (return_last) {  // the newest image is the returned one: copy it in the same pass
      float* bf = BF + b * D;
#pragma omp simd reduction(+ : gg, ff)
      for (int64_t d = 0; d < D; ++d) {
        const float g = fb[d] - xb[d];
        Fs[d] = fb[d];
        bf[d] = fb[d];
        Gs[d] = g;
        gg += g * g;
        ff += fb[d] * fb[d];
      }
    } else {
#pragma omp simd reduction(+ : gg, ff)
      for (int64_t d = 0; d < D; ++d) {
        const float g = fb[d] - xb[d];
        Fs[d] = fb[d];
        Gs[d] = g;
        gg += g * g;
        ff += fb[d] * fb[d];
      }
    }
    double* Gb = GR + b * m * m;  // row-major m x m; only the k x k corner is live
    Gb[slot * m + slot] = gg;
    for (int64_t i = 0; i < k; ++i) {
      if (i == slot) continue;
      const float* Gi = Gp + (b * m + i) * D;
      float dot = 0.f;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < D; ++d) dot += Gs[d] * Gi[d];
      Gb[slot * m + i] = Gb[i * m + slot] = dot;
    }
    const float r = std::sqrt(gg) / (std::sqrt(ff) + static_cast<float>(eps));
    RES[b] = r;
    bool accepted = true;
    if (return_last) {
      BR[b] = r;  // best_fx was written above
    } else if (n == 0 || r <= BR[b]) {
      std::copy(fb, fb + D, BF + b * D);
      BR[b] = r;
    }
    // A plain step is always taken; a mixed point only if no worse than the anchor (safeguard
    // before: the decision was taken before evaluating the point, so every point is taken).
    if (n > 0 && !safeguard_before) accepted = !WM[b] || r <= AR[b];
    if (accepted) {
      AS[b] = slot;
      AR[b] = r;
    }
    // alpha ~ (gram + reg I)^{-1} 1, normalised to sum 1; Gaussian elimination, partial pivoting
    double A[kMaxM][kMaxM + 1];
    double trace = 0.0;
    for (int64_t i = 0; i < k; ++i) trace += Gb[i * m + i];
    const double reg = absolute_tikhonov ? lam : lam * trace / k + tiny;
    for (int64_t i = 0; i < k; ++i) {
      for (int64_t j = 0; j < k; ++j) A[i][j] = Gb[i * m + j] + (i == j ? reg : 0.0);
      A[i][k] = 1.0;
    }
    bool ok = true;
    for (int64_t c = 0; c < k && ok; ++c) {
      int64_t p = c;
      for (int64_t row = c + 1; row < k; ++row)
        if (std::fabs(A[row][c]) > std::fabs(A[p][c])) p = row;
      if (!(A[p][c] != 0.0) || !std::isfinite(A[p][c])) {
        ok = false;
        break;
      }
      if (p != c)
        for (int64_t j = 0; j <= k; ++j) std::swap(A[p][j], A[c][j]);
      for (int64_t row = c + 1; row < k; ++row) {
        const double f = A[row][c] / A[c][c];
        for (int64_t j = c; j <= k; ++j) A[row][j] -= f * A[c][j];
      }
    }
    double sol[kMaxM];
    double total = 0.0;
    if (ok) {
      for (int64_t row = k - 1; row >= 0; --row) {
        double v = A[row][k];
        for (int64_t j = row + 1; j < k; ++j) v -= A[row][j] * sol[j];
        sol[row] = v / A[row][row];
        total += sol[row];
      }
    }
    float alpha[kMaxM];
    for (int64_t i = 0; ok && i < k; ++i) {
      alpha[i] = static_cast<float>(sol[i] / total);
      ok = std::isfinite(alpha[i]);
    }
    if (ok && safeguard_before && k > 1) {
      // The linear model's predicted residual: |sum_i alpha_i g_i|^2 = sum_ij alpha_i alpha_j
      // <g_i, g_j> = alpha^T Gram alpha, with the unregularised Gram matrix; no pass over the
      // rows. In float64, against the newest residual |g_k|^2 = gg.
      double predicted = 0.0;
      for (int64_t i = 0; i < k; ++i) {
        double row = 0.0;
        for (int64_t j = 0; j < k; ++j) row += Gb[i * m + j] * (sol[j] / total);
        predicted += (sol[i] / total) * row;
      }
      ok = predicted <= static_cast<double>(gg);
    }
    const bool mixed = ok && accepted && k > 1;  // with one pair the "mix" is the plain step
    WM[b] = mixed;
    float* xo = X + b * D;
    if (mixed) {
      const float* F0 = Fp + b * m * D;
      const float a0 = alpha[0];
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) xo[d] = a0 * F0[d];
      for (int64_t i = 1; i < k; ++i) {
        const float* Fi = Fp + (b * m + i) * D;
        const float a = alpha[i];
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) xo[d] += a * Fi[d];
      }
    } else {  // the plain step from the anchor: its image is still in the ring (m >= 2)
      const float* Fa = Fp + (b * m + AS[b]) * D;
      std::copy(Fa, Fa + D, xo);
    }
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("anderson_step", &anderson_step, "one fused Anderson iteration (CPU, float32)",
             py::arg("x"), py::arg("fx"), py::arg("F"), py::arg("G"),
             py::arg("gram"), py::arg("res"), py::arg("best_fx"),
             py::arg("best_res"), py::arg("anchor_slot"),
             py::arg("anchor_res"), py::arg("was_mixed"), py::arg("n"),
             py::arg("lam"), py::arg("tiny"), py::arg("eps"),
             py::arg("absolute_tikhonov"), py::arg("safeguard_before"),
             py::arg("return_last"));
}
