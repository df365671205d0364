// Operator schemas for the evilbench library and the Python extension module.
// Implementations register themselves per backend with TORCH_LIBRARY_IMPL:
//   csrc/cpu/*.cpp   (CPU)          csrc/cuda/*_launch.cpp   (CUDA, torch glue around torch-free .cu)
// Python-side wrappers, fake kernels and autograd live in evilbench/kernels/.
#include <torch/extension.h>
#include <torch/library.h>

TORCH_LIBRARY(evilbench, m) {
  // ---- Newton–Schulz / Muon (issue: core) --------------------------------------------------
  // coefficients: 3 per step (a0, b0, c0, a1, ...). Returns the outputs and an int32 status per
  // matrix (0 ok, 1 NaN/Inf input) so the op never syncs; evilbench.kernels.newton_schulz raises.
  // clamp_eps: divide by max(||X||, eps) (torch.optim.Muon) instead of ||X|| + eps (KellerJordan).
  m.def("newton_schulz(Tensor[] mats, float[] coefficients, float eps, bool clamp_eps=False) -> (Tensor[], Tensor)");
  // One Muon step for matrices sharing lr / weight decay / momentum (torch.optim.Muon semantics):
  // buf.lerp_(grad, 1 - momentum); U = nesterov ? grad.lerp(buf, momentum) : buf;
  // param = param * (1 - lr * weight_decay) - lr * lr_ratios[i] * NS(U)   (NS with clamp_eps).
  m.def("muon_update_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] bufs, float lr, float[] lr_ratios, "
        "float weight_decay, float momentum, bool nesterov, float[] coefficients, float eps) -> ()");

  // ---- spectral penalty (issue: spectral core) ----------------------------------------------

}

PYBIND11_MODULE(_C, m) {
  m.doc() = "evilbench C++/CUDA kernels (ops live under torch.ops.evilbench)";
#ifdef EVILBENCH_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
