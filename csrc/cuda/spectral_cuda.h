// Torch-free interface between the CUDA kernels of the spectral penalty (spectral.cu) and their torch
// launcher (spectral_launch.cpp). Every launch covers all pairs of a call: the host writes a work
// table (pairs + chunks, 64-bit offsets) that is copied to the device with one async copy.
#pragma once

#include <cuda_runtime.h>

namespace evilbench {
namespace spectral {
namespace cuda {

enum DType : int { kF32 = 0, kF64 = 1, kBF16 = 2, kF16 = 3 };

// One LoRA pair: A (r × n), B (m × r), row-major contiguous.
struct PairDesc {
  const void* A;
  const void* B;
  void* gA;  // backward outputs (same dtype and shape as A, B); null in forward
  void* gB;
  long long n, m;
  int r, dtA, dtB, pad_;
  long long gram_off;  // doubles: P at gram_off, Q at gram_off + r² (spectral_grams output)
  long long fac_off;   // doubles: FB at fac_off, FA at fac_off + r² (factors)
  long long sig_off;   // floats: σ at sig_off (singular values output)
  int p_chunk0, p_nchunks;  // chunks of B (rows) whose partial Grams sum to P
  int q_chunk0, q_nchunks;  // chunks of A (columns) whose partial Grams sum to Q
};

// A run of rows of B (side 0) or of columns of A (side 1) of one pair.
struct ChunkDesc {
  int pair, side;
  long long start, len;
  long long part_off;  // doubles: this chunk's partial Gram (r × r, upper triangle) in the partials buffer
};

constexpr int kChunkLen = 2048;  // rows of B / columns of A per chunk
constexpr int kMaxRankCuda = 64;

// rxr modes besides the penalty kinds 0..3 (spectral_common.h): 4 = singular values, 5 = Grams only
constexpr int kModeGrams = 5;

// Shared memory (bytes) the r × r kernel needs for ranks up to rmax.
size_t rxr_smem_bytes(int rmax);

// Pass 1: partial Grams of every chunk (float64).
cudaError_t launch_gram(const PairDesc* pairs, const ChunkDesc* chunks, int nchunks, double* partials, int rmax,
                        cudaStream_t stream);
// r × r phase, one block per pair: sums the partials, then by mode: Grams out (5), singular values (4),
// or penalty values (+ gradient factors when need) for kind 0..3.
cudaError_t launch_rxr(const PairDesc* pairs, int npairs, const ChunkDesc* chunks, const double* partials, int mode,
                       int need, double* values, double* factors, double* grams_out, float* sigma_out, int rmax,
                       cudaStream_t stream);
// Pass 2: gB = g·B FB, gA = g·FA A for every chunk (g = grad_values[pair]).
cudaError_t launch_apply(const PairDesc* pairs, const ChunkDesc* chunks, int nchunks, const double* factors,
                         const double* grad_values, int rmax, cudaStream_t stream);

}  // namespace cuda
}  // namespace spectral
}  // namespace evilbench
