// Operator schemas for the evilbench library and the Python extension module.
// Implementations register themselves per backend with TORCH_LIBRARY_IMPL:
//   csrc/cpu/*.cpp   (CPU)          csrc/cuda/*_launch.cpp   (CUDA, torch glue around torch-free .cu)
// Python-side wrappers, fake kernels and autograd live in evilbench/kernels/.
#include <torch/extension.h>
#include <torch/library.h>

TORCH_LIBRARY(evilbench, m) {
  // ---- Newton–Schulz / Muon (issue: core) --------------------------------------------------

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
