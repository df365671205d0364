// Spectral penalty: constants and per-singular-value formulas shared by the CPU (.cpp) and CUDA (.cu)
// kernels. Torch-free (plain C++ / CUDA). Keep in sync with evilbench/kernels/spectral.py.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define EB_HD __host__ __device__ __forceinline__
#else
#define EB_HD inline
#endif

namespace evilbench {
namespace spectral {

// ‖B‖_F² or ‖A‖_F² ≤ this: value 0, gradients exactly 0. Only zero (peft's B = 0) and float64 inputs
// whose Grams underflow (entries of P below ~1e-292 lose precision) qualify: the measures are
// scale-invariant, so a pair with A scaled by 1e14 and B by 1e-14 keeps its spectrum. Numerically
// zero products B A are caught relative to the scale, by kZeroProduct.
constexpr double kMinGram = 1e-290;
constexpr double kSigmaTol = 1e-6;   // σᵢ ≤ kSigmaTol·σ₁ counts as zero (zero subgradient)
constexpr double kTieTol = 1e-5;     // stable_rank: σᵢ ≥ (1 − kTieTol)·σ₁ ties with σ₁
constexpr double kCholTol = 1e-10;   // Cholesky pivot² ≤ kCholTol·max diag(P): eigen route
constexpr double kEigTol = 1e-12;    // eigen route: λ(P) ≤ kEigTol·λ_max treated as zero
constexpr double kZeroProduct = 1e-10;  // σ₁ ≤ kZeroProduct·‖A‖_F‖B‖_F: B A is numerically 0, value 0

enum Kind : int { kFroNuclear = 0, kEntropy = 1, kStableRank = 2, kParticipation = 3, kSingularValues = 4 };

// Value of the penalty and g/σ (written to gos, 0 for zero σ) for descending σ[0..r) with entries
// ≤ kSigmaTol·σ₁ already zeroed and σ₁ > 0. Not for kParticipation (SVD-free, handled by the caller).
EB_HD double kind_value_and_gos(int kind, int r, const double* sigma, double* gos) {
  double s1 = 0.0, s2 = 0.0;
  for (int i = 0; i < r; ++i) {
    s1 += sigma[i];
    s2 += sigma[i] * sigma[i];
  }
  if (r == 1) {
    gos[0] = 0.0;
    return 0.0;
  }
  const double rr = static_cast<double>(r);
  double value = 0.0;
  if (kind == kFroNuclear) {
    const double nf = sqrt(s2);
    value = nf / s1 - 1.0 / sqrt(rr);
    for (int i = 0; i < r; ++i)
      gos[i] = sigma[i] > 0.0 ? 1.0 / (nf * s1) - nf / (s1 * s1 * sigma[i]) : 0.0;
  } else if (kind == kEntropy) {
    const double lr = log(rr);
    double H = 0.0;
    for (int i = 0; i < r; ++i)
      if (sigma[i] > 0.0) {
        const double p = sigma[i] / s1;
        H -= p * log(p);
      }
    value = 1.0 - H / lr;
    for (int i = 0; i < r; ++i)
      gos[i] = sigma[i] > 0.0 ? (log(sigma[i] / s1) + H) / (s1 * lr) / sigma[i] : 0.0;
  } else {  // kStableRank
    const double smax = sigma[0];
    int tied = 0;
    for (int i = 0; i < r; ++i) tied += sigma[i] >= (1.0 - kTieTol) * smax;
    value = 1.0 - s2 / (smax * smax) / rr;
    for (int i = 0; i < r; ++i) {
      if (!(sigma[i] > 0.0)) {
        gos[i] = 0.0;
        continue;
      }
      double g = -2.0 / (smax * smax * rr);
      if (sigma[i] >= (1.0 - kTieTol) * smax) g += 2.0 * s2 / (smax * smax * smax * rr * tied) / sigma[i];
      gos[i] = g;
    }
  }
  return value;
}

}  // namespace spectral
}  // namespace evilbench
