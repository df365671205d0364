// Operator schemas for the evilbench library and the Python extension module.
// Implementations register themselves per backend with TORCH_LIBRARY_IMPL:
//   csrc/cpu/*.cpp   (CPU)          csrc/cuda/*_launch.cpp   (CUDA, torch glue around torch-free .cu)
// Python-side wrappers, fake kernels and autograd live in evilbench/kernels/.
// Light headers (not torch/extension.h, which pulls in torch's whole C++ frontend): ATen, the
// operator registry, and torch's pybind11 type casters for the module functions below.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/library.h>

#include <mutex>
#include <set>

TORCH_LIBRARY(evilbench, m) {
  // ---- Newton–Schulz / Muon ------------------------------------------------------------------
  // coefficients: 3 per step (a0, b0, c0, a1, ...). Returns the outputs and an int32 status per
  // matrix (0 ok, 1 NaN/Inf input) so the op never syncs; evilbench.kernels.newton_schulz raises.
  // clamp_eps: divide by max(||X||, eps) (torch.optim.Muon) instead of ||X|| + eps (KellerJordan).
  m.def("newton_schulz(Tensor[] mats, float[] coefficients, float eps, bool clamp_eps=False) -> (Tensor[], Tensor)");
  // One Muon step for matrices sharing lr / weight decay / momentum (torch.optim.Muon semantics):
  // buf.lerp_(grad, 1 - momentum); U = nesterov ? grad.lerp(buf, momentum) : buf;
  // param = param * (1 - lr * weight_decay) - lr * lr_ratios[i] * NS(U)   (NS with clamp_eps).
  m.def("muon_update_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] bufs, float lr, float[] lr_ratios, "
        "float weight_decay, float momentum, bool nesterov, float[] coefficients, float eps) -> ()");

  // ---- spectral penalty ------------------------------------------------------------------------
  // Pairs A_i (r_i × d_in), B_i (d_out × r_i); any mix of float32/bfloat16/float16/float64, contiguous.
  // Packed layouts (float64): per pair r_i² entries of P then of Q (grams), FB then FA (factors).
  m.def("spectral_grams(Tensor[] A, Tensor[] B) -> Tensor");
  // values: float64 (n,), NaN for pairs with non-finite input; factors: float64 (Σ 2 r_i²) or (0,)
  m.def("spectral_forward(Tensor[] A, Tensor[] B, str kind, bool need_factors) -> (Tensor, Tensor)");
  // gA_i = grad_values[i] · FA_i A_i, gB_i = grad_values[i] · B_i FB_i, in the dtypes of A_i, B_i
  m.def("spectral_backward(Tensor[] A, Tensor[] B, Tensor factors, Tensor grad_values) -> (Tensor[], Tensor[])");
  // the r_i singular values of each B_i A_i, descending, float32 (Σ r_i,)
  m.def("spectral_singular_values(Tensor[] A, Tensor[] B) -> Tensor");

}

namespace evilbench {
namespace spectral {
namespace cpu {
std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> spectral_backward_impl_cpu(
    at::TensorList A, at::TensorList B, const at::Tensor& factors, const at::Tensor& grad_values, bool grouped);
}
#ifdef EVILBENCH_WITH_CUDA
namespace cuda {
std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> spectral_backward_impl_cuda(
    at::TensorList A, at::TensorList B, const at::Tensor& factors, const at::Tensor& grad_values, bool grouped);
}
#endif
}  // namespace spectral
}  // namespace evilbench

// Eager-mode twin of evilbench::spectral_backward whose gradients share one allocation per dtype
// (fewer host-side allocations per training step). Not an operator: the registered op keeps
// separate outputs, as its schema promises.
static std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> spectral_backward_grouped(
    std::vector<at::Tensor> A, std::vector<at::Tensor> B, const at::Tensor& factors, const at::Tensor& grad_values) {
  TORCH_CHECK(!A.empty(), "spectral_backward_grouped: no pairs");
  if (A[0].is_cuda()) {
#ifdef EVILBENCH_WITH_CUDA
    return evilbench::spectral::cuda::spectral_backward_impl_cuda(A, B, factors, grad_values, true);
#else
    TORCH_CHECK(false, "evilbench._C was built without CUDA");
#endif
  }
  return evilbench::spectral::cpu::spectral_backward_impl_cpu(A, B, factors, grad_values, true);
}

// How many distinct threads at::parallel_for gives this extension's loops for n one-element tasks:
// 1 with several torch threads means the build lost OpenMP (tests/test_build.py checks it).
static int64_t parallel_threads_used(int64_t n) {
  std::mutex mu;
  std::set<int> ids;
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) {
    std::lock_guard<std::mutex> lock(mu);
    ids.insert(at::get_thread_num());
  });
  return static_cast<int64_t>(ids.size());
}

PYBIND11_MODULE(_C, m) {
  m.def("_parallel_threads_used", &parallel_threads_used, "distinct threads at::parallel_for used for n tasks");
  m.def("_spectral_backward_grouped", &spectral_backward_grouped, "gA, gB of the spectral penalty (eager path)");
  m.doc() = "evilbench C++/CUDA kernels (ops live under torch.ops.evilbench)";
#ifdef EVILBENCH_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
