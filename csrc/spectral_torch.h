// Torch-side helpers shared by the CPU ops (cpu/spectral.cpp) and the CUDA launcher
// (cuda/spectral_launch.cpp). Uses ATen, so the torch-free .cu files never include it.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

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

// The block last handed out for (slot, dtype) on the CPU when nothing else holds its storage any more
// (the previous step's .grad tensors were dropped by zero_grad), else a new block that replaces it.
// Refilling warm pages costs 14 ms for the Qwen3-8B set where fresh pages cost 80–100 ms of
// first-touch faults. Called with empty_like_grouped's lock held.
inline at::Tensor reusable_cpu_block(int slot, at::ScalarType st, int64_t numel, const at::TensorOptions& opts) {
  // never destroyed, so no tensor outlives torch at interpreter exit
  static auto* cache = new std::map<std::pair<int, int>, at::Tensor>();
  at::Tensor& kept = (*cache)[{slot, static_cast<int>(st)}];
  if (!kept.defined() || kept.numel() != numel || kept.storage().use_count() != 1)
    kept = at::empty({numel}, opts.dtype(st));
  return kept;
}

// Contiguous tensors shaped like `ts`, carved from one allocation per dtype (on the CPU reused
// across calls for a `reuse_slot` ≥ 0, see reusable_cpu_block). They share storage but are not
// autograd views, so AccumulateGrad can adopt them as .grad.
inline std::vector<at::Tensor> empty_like_grouped(const at::TensorList& ts, int reuse_slot = -1) {
  std::vector<at::Tensor> out(ts.size());
  if (ts.empty()) return out;
  const bool reuse = ts[0].is_cpu() && reuse_slot >= 0;
  static std::mutex mu;
  std::unique_lock<std::mutex> lock(mu, std::defer_lock);
  if (reuse) lock.lock();  // no other call may take the block between check and carve
  for (at::ScalarType st : {at::kFloat, at::kBFloat16, at::kHalf, at::kDouble}) {
    int64_t total = 0;
    for (const auto& t : ts)
      if (t.scalar_type() == st) total += t.numel();
    if (total == 0) continue;
    at::Tensor flat = reuse ? reusable_cpu_block(reuse_slot, st, total, ts[0].options())
                            : at::empty({total}, ts[0].options().dtype(st));
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
