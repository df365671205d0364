// ATen helpers of the Newton–Schulz ops shared by the CPU and CUDA glue (not part of the torch-free
// .cu files).
#pragma once
#include <ATen/ATen.h>

#include <utility>

namespace evilbench {
namespace ns {

// The Gram form in float64 (x is r x d, any float dtype and device): G = X Xᵀ, the r x r iteration
// and out = (sM) X all in float64. Used for ranks 65..256 on CUDA and, on both devices, for the
// matrices whose fp32 Gram matrix is too ill-conditioned for the fast kernels (ns_common.h).
// Returns (out r x d float64, bad: 0-d bool tensor, true when x holds NaN/Inf).
inline std::pair<at::Tensor, at::Tensor> gram_float64(const at::Tensor& x, at::ArrayRef<double> coef, double eps,
                                                      bool clamp_eps) {
  at::Tensor X = x.to(at::kDouble);
  at::Tensor G = at::mm(X, X.t());
  at::Tensor norm = G.trace().sqrt();
  at::Tensor s = clamp_eps ? norm.clamp_min(eps).reciprocal() : (norm + eps).reciprocal();
  G = G * (s * s);
  at::Tensor M = at::eye(X.size(0), X.options());
  for (size_t i = 0; i + 2 < coef.size(); i += 3) {
    at::Tensor A = i == 0 ? G : at::mm(at::mm(M, G), M.t());
    at::Tensor B = at::addmm(A, A, A, coef[i + 1], coef[i + 2]);
    M = at::addmm(M, B, M, coef[i], 1.0);
  }
  return {at::mm(M * s, X), at::logical_not(at::isfinite(norm))};
}

}  // namespace ns
}  // namespace evilbench
