// Newton–Schulz pieces shared by the CPU and CUDA kernels (torch-free; host and device).
//
// Why the fp32 Gram form needs a guard: every iterate is X_k = M_k X_0 with M_k = f_k(Ĝ), Ĝ = X Xᵀ
// normalised to trace 1. Rounding Ĝ to fp32 perturbs its eigenvalues λ = σ² by ~1e-7 (relative to
// tr Ĝ), i.e. a singular value σ by ~1e-7 / σ: the Gram form squares the condition number. For σ
// below ~3e-4 (near-square or ill-conditioned inputs, rank deficiency) Ĝ no longer holds σ at all,
// and each step multiplies what is left by up to a ≈ 3.4: after 8–12 steps the error reaches 1e-2
// (64 x 64 Gaussian) or diverges (cond 1e6). A float64 r x r phase does not help, the information
// is gone once Ĝ is rounded. So the fast fp32 Gram form runs only when λ_min(Ĝ) >= gram_min_eig(),
// tested with a float64 Cholesky of Ĝ − τ I (r³/6 flops, no eigen-solver); any other matrix takes
// the Gram form in float64 (G, the r x r phase and out = (sM) X all in float64): measured within
// 1e-7 of the float64 classic iteration on near-square, rank-deficient and cond-1e6 inputs up to
// 10 steps, 3e-6 at 11 and 1.5e-5 at 12 on the worst test input (near rank one, where the float64
// Gram form's own squared condition number starts to show).
#pragma once

#if defined(__CUDACC__)
#define EVILBENCH_HD __host__ __device__
#else
#define EVILBENCH_HD
#endif

namespace evilbench {
namespace ns {

// Smallest eigenvalue of Ĝ (relative to tr Ĝ) at which the fp32 Gram form stays within ~2e-5 of
// the float64 reference for these coefficients. The error grows like amp² · 1e-7 / λ_min, amp the
// product over steps of max(1, |a_k|) (the growth of the smallest directions); measured with the
// KellerJordan coefficients on square to thin inputs with controlled λ_min: 1e-3 keeps every step
// count 1–12 within 1e-5, 1e-4 keeps 5 steps within 1e-5, 1e-5 keeps 4.
template <class T>
EVILBENCH_HD inline double gram_min_eig(const T* coef, int steps) {
  double amp = 1.0;
  for (int s = 0; s < steps && amp < 1e6; ++s) {
    const double a = coef[3 * s] < 0 ? -(double)coef[3 * s] : (double)coef[3 * s];
    if (a > 1.0) amp *= a;
  }
  const double tau = 4e-10 * amp * amp;
  return tau < 1e-3 ? tau : 1e-3;
}

}  // namespace ns
}  // namespace evilbench
