// Torch-free interface between the Newton–Schulz CUDA kernels (newton_schulz.cu) and their
// torch launcher (newton_schulz_launch.cpp). Only CUDA runtime types cross it.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace evilbench {
namespace ns_cuda {

enum : int32_t { kF32 = 0, kBF16 = 1, kF16 = 2 };
enum : int32_t { kTall = 1, kVec = 2 };

// One matrix of the device-side work table. X is r x d (r = min dim). In the source and the
// destination, element (i, k) of X sits at i*ld + k (wide) or k*ld + i (tall: the tensor is d x r).
struct NsMat {
  const void* src;      // newton_schulz: input X;  muon: gradient
  void* dst;            // newton_schulz: output;   muon: parameter (updated in place)
  void* buf;            // muon: momentum buffer (updated in place); newton_schulz: nullptr
  int64_t d;            // long dimension
  int64_t ld_src;       // the non-unit stride of src (and of buf)
  int64_t ld_dst;       // the non-unit stride of dst
  int64_t chunk_begin;  // first block of this matrix in its launch (64-bit prefix sum)
  int64_t ws;           // offset (floats) of this matrix's workspace: partial Grams, stats, M'', t
  int32_t nchunk;       // blocks (column chunks) of this matrix
  int32_t r;
  int32_t dtype;        // kF32 / kBF16 / kF16
  int32_t flags;        // kTall, kVec (16-byte aligned vector access is safe)
  float lr_ratio;       // muon: per-matrix learning-rate ratio
  int32_t index;        // position in the caller's list (status)
};

// Everything one launch group (matrices of one rank bucket) needs; plain values, no host syncs.
struct NsLaunch {
  const NsMat* table;   // device pointer to this bucket's entries
  const float* coef;    // device pointer: 3 floats per step
  int32_t n_mats;
  int32_t steps;
  int64_t n_chunks;     // total blocks of the Gram and apply kernels
  float* ws;            // device workspace
  int32_t* status;      // per matrix of the caller's list (NsMat::index), 0 ok / 1 NaN-Inf; may be null
  int32_t muon;         // 0: newton_schulz, 1: fused Muon step
  int32_t nesterov;
  int32_t clamp_eps;
  float eps;
  float momentum;
  float lr;             // muon: base lr (per-matrix lr = lr * lr_ratio)
  float decay;          // muon: 1 - lr * weight_decay
};

// Rank buckets with compiled kernels and their geometry (must match newton_schulz.cu).
constexpr int kMaxFastRank = 64;
inline int bucket_rank(int r) { return r <= 16 ? 16 : (r <= 32 ? 32 : 64); }
inline int chunk_cols(int R) { return R == 16 ? 2048 : (R == 32 ? 1024 : 512); }
// workspace floats of one matrix: partial Grams, per-chunk (amax, bad), M'' (R x R), t and the
// float64-path flag (padded to 4), M'' in float64 (R x R doubles)
inline int64_t workspace_floats(int R, int64_t nchunk) {
  return nchunk * (int64_t)R * R + 2 * nchunk + (int64_t)R * R + 4 + 2 * (int64_t)R * R;
}

// Launches the Gram, r x r and apply kernels for one bucket (3 launches) on `stream`.
cudaError_t ns_launch(int R, const NsLaunch& args, cudaStream_t stream);

}  // namespace ns_cuda
}  // namespace evilbench
