// Torch-side helpers shared by the CPU ops (cpu/spectral.cpp) and the CUDA launcher
// (cuda/spectral_launch.cpp). Uses ATen, so the torch-free .cu files never include it.
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace evilbench {
namespace spectral {

// Shape and layout checks common to every backend; `extra(i)` adds the backend's own checks of
// pair i (device, dtype, rank limits).
template <class Extra>
inline void check_pairs_with(const at::TensorList& A, const at::TensorList& B, const char* who, Extra&& extra) {
  TORCH_CHECK(A.size() == B.size(), who, ": got ", A.size(), " A matrices but ", B.size(), " B matrices");
  for (size_t i = 0; i < A.size(); ++i) {
    TORCH_CHECK(A[i].dim() == 2 && B[i].dim() == 2, who, ": pair ", i, ": A and B must be 2-D");
    TORCH_CHECK(A[i].size(0) == B[i].size(1), who, ": pair ", i, ": A is ", A[i].sizes(), " (r × d_in) but B is ",
                B[i].sizes(), " (d_out × r)");
    TORCH_CHECK(A[i].size(0) >= 1 && A[i].size(1) >= 1 && B[i].size(0) >= 1, who, ": pair ", i, ": empty matrix");
    TORCH_CHECK(A[i].is_contiguous() && B[i].is_contiguous(), who, ": pair ", i, ": matrices must be contiguous");
    extra(i);
  }
}

// Ask for transparent huge pages on the 2 MiB-aligned interior of a fresh CPU block (a no-op where
// THP is "never"). Gradients of a large model's adapters are hundreds of MB written once per step into
// fresh memory; on 4 KiB pages the first-touch faults cost more than the kernel that writes them
// (Qwen3-8B set, 349 MB: spectral backward 308 ms median with separate buffers, 153 ms with one
// advised block; bench/spectral_backward_alloc.py).
inline void advise_huge_pages(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t huge = uintptr_t(2) << 20;
  const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + huge - 1) & ~(huge - 1);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(huge - 1);
  if (e > b) (void)madvise(reinterpret_cast<void*>(b), e - b, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

// Contiguous tensors shaped like `ts`, carved from one allocation per dtype (huge-page advised on
// the CPU). They share storage but are not autograd views, so AccumulateGrad can adopt them as .grad.
inline std::vector<at::Tensor> empty_like_grouped(const at::TensorList& ts) {
  std::vector<at::Tensor> out(ts.size());
  for (at::ScalarType st : {at::kFloat, at::kBFloat16, at::kHalf, at::kDouble}) {
    int64_t total = 0;
    for (const auto& t : ts)
      if (t.scalar_type() == st) total += t.numel();
    if (total == 0) continue;
    at::Tensor flat = at::empty({total}, ts[0].options().dtype(st));
    if (flat.is_cpu()) advise_huge_pages(flat.data_ptr(), static_cast<size_t>(flat.nbytes()));
    int64_t off = 0;
    for (size_t i = 0; i < ts.size(); ++i)
      if (ts[i].scalar_type() == st) {
        auto impl = c10::make_intrusive<c10::TensorImpl>(c10::Storage(flat.storage()), flat.key_set(), flat.dtype());
        impl->set_sizes_contiguous(ts[i].sizes());
        impl->set_storage_offset(off);
        out[i] = at::Tensor(std::move(impl));
        off += ts[i].numel();
      }
  }
  return out;
}

}  // namespace spectral
}  // namespace evilbench
