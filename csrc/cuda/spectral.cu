// CUDA kernels of the fused spectral penalty. CUDA headers only (no torch), so plain nvcc can check
// this file: nvcc -std=c++17 -O3 -c csrc/cuda/spectral.cu -gencode=arch=compute_90a,code=sm_90a
//
// Three launches cover all pairs of a call, whatever their number (work tables with 64-bit offsets):
//   gram_kernel   one block per chunk (≤ 2048 rows of B or columns of A): partial Grams in float64
//                 (products of float32/bfloat16/float16 values are exact in float64)
//   rxr_kernel    one block per pair: sums its chunks' partials (fixed order: deterministic), then the
//                 r × r work in float64 (Cholesky / eigen route, parallel cyclic Jacobi eigen-solver,
//                 penalty value, gradient factors FB = NQ, FA = PN)
//   apply_kernel  one block per chunk: gB = g·B FB, gA = g·FA A (float32 math; float64 for float64 input)
// No host synchronisation anywhere.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "../spectral_common.h"
#include "spectral_cuda.h"

namespace evilbench {
namespace spectral {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kTileK = 64;      // apply pass: rows of B / columns of A staged in shared memory at a time
constexpr int kGramTileK = 32;  // Gram pass: the same, double-buffered through registers

__device__ __forceinline__ double load_d(const void* p, int dt, long long i) {
  switch (dt) {
    case kF32: return static_cast<double>(static_cast<const float*>(p)[i]);
    case kF64: return static_cast<const double*>(p)[i];
    case kBF16: return static_cast<double>(__bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]));
    default: return static_cast<double>(__half2float(static_cast<const __half*>(p)[i]));
  }
}

template <typename T>
__device__ __forceinline__ T load_as(const void* p, int dt, long long i) {
  if (dt == kF64) return static_cast<T>(static_cast<const double*>(p)[i]);
  if (dt == kF32) return static_cast<T>(static_cast<const float*>(p)[i]);
  if (dt == kBF16) return static_cast<T>(__bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]));
  return static_cast<T>(__half2float(static_cast<const __half*>(p)[i]));
}

template <typename T>
__device__ __forceinline__ void store_as(void* p, int dt, long long i, T v) {
  if (dt == kF64) static_cast<double*>(p)[i] = static_cast<double>(v);
  else if (dt == kF32) static_cast<float*>(p)[i] = static_cast<float>(v);
  else if (dt == kBF16) static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16(static_cast<float>(v));
  else static_cast<__half*>(p)[i] = __float2half(static_cast<float>(v));
}

// ---- pass 1: partial Grams ----------------------------------------------------------------------

// Tiles of 4 × 4 entries over the upper triangle of an rp × rp Gram (rp = roundup(r, 4)).
__host__ __device__ inline void gram_layout(int r, int* rp, int* ntiles, int* groups) {
  *rp = (r + 3) / 4 * 4;
  const int t = *rp / 4;
  *ntiles = t * (t + 1) / 2;
  *groups = kThreads / *ntiles > 0 ? kThreads / *ntiles : 1;
}

__host__ __device__ inline size_t gram_smem_doubles(int r) {
  int rp, nt, g;
  gram_layout(r, &rp, &nt, &g);
  const size_t stage = static_cast<size_t>(kGramTileK) * (rp + 2);
  const size_t red = static_cast<size_t>(nt) * 16;  // one k-group at a time
  return stage > red ? stage : red;
}

constexpr int kMaxPrefetch = kGramTileK * 64 / kThreads;  // staged values per thread at r = 64

// Which element of the staging tile the e-th prefetch slot of a thread holds, and its global index.
__device__ __forceinline__ bool stage_slot(const ChunkDesc& ch, const PairDesc& pd, int rp, int kt, long long k0,
                                           int idx, int* sidx, long long* gidx) {
  const int r = pd.r;
  const int ld = rp + 2;
  int k, i;
  if (ch.side == 0) {  // rows of B: contiguous runs of r values
    k = idx / rp;
    i = idx - k * rp;
    *gidx = (ch.start + k0 + k) * r + i;
  } else {  // columns of A: row i, columns start + k0 + k
    i = idx / kGramTileK;
    k = idx - i * kGramTileK;
    *gidx = static_cast<long long>(i) * pd.n + ch.start + k0 + k;
  }
  *sidx = k * ld + i;
  return k < kt && i < r;
}

__global__ void __launch_bounds__(kThreads, 3) gram_kernel(const PairDesc* __restrict__ pairs,
                                                           const ChunkDesc* __restrict__ chunks,
                                                           double* __restrict__ partials) {
  extern __shared__ __align__(16) double smem[];
  const ChunkDesc ch = chunks[blockIdx.x];
  const PairDesc pd = pairs[ch.pair];
  const int r = pd.r;
  int rp, ntiles, groups;
  gram_layout(r, &rp, &ntiles, &groups);
  const int ld = rp + 2;
  const int tid = threadIdx.x;
  const bool active = tid < ntiles * groups;
  const int tile = tid % ntiles, kg = tid / ntiles;
  int ti = 0, tj = 0;
  {
    const int t = rp / 4;
    int rem = tile;
    while (rem >= t - ti) {
      rem -= t - ti;
      ++ti;
    }
    tj = ti + rem;
  }
  double acc[16];
#pragma unroll
  for (int e = 0; e < 16; ++e) acc[e] = 0.0;

  const void* X = ch.side == 0 ? pd.B : pd.A;
  const int dt = ch.side == 0 ? pd.dtB : pd.dtA;
  const int nslots = kGramTileK * rp;
  // float32/bfloat16/float16 inputs: the next tile is fetched into registers (as float, exact) while
  // the current one is multiplied, hiding the global-memory latency; float64 inputs load directly.
  const bool prefetch = dt != kF64;
  float pf[kMaxPrefetch];
  auto fetch = [&](long long k0) {
    const int kt = ch.len - k0 < kGramTileK ? static_cast<int>(ch.len - k0) : kGramTileK;
#pragma unroll
    for (int e = 0; e < kMaxPrefetch; ++e) {
      const int idx = tid + e * kThreads;
      int sidx;
      long long gidx;
      pf[e] = 0.f;
      if (idx < nslots && stage_slot(ch, pd, rp, kt, k0, idx, &sidx, &gidx)) pf[e] = load_as<float>(X, dt, gidx);
    }
  };
  if (prefetch) fetch(0);
  for (long long k0 = 0; k0 < ch.len; k0 += kGramTileK) {
    const int kt = ch.len - k0 < kGramTileK ? static_cast<int>(ch.len - k0) : kGramTileK;
    if (prefetch) {
#pragma unroll
      for (int e = 0; e < kMaxPrefetch; ++e) {
        const int idx = tid + e * kThreads;
        int sidx;
        long long gidx;
        if (idx < nslots) {
          stage_slot(ch, pd, rp, kt, k0, idx, &sidx, &gidx);
          smem[sidx] = static_cast<double>(pf[e]);
        }
      }
    } else {
      for (int idx = tid; idx < nslots; idx += kThreads) {
        int sidx;
        long long gidx;
        const bool ok = stage_slot(ch, pd, rp, kt, k0, idx, &sidx, &gidx);
        smem[sidx] = ok ? load_d(X, dt, gidx) : 0.0;
      }
    }
    __syncthreads();
    if (prefetch && k0 + kGramTileK < ch.len) fetch(k0 + kGramTileK);
    if (active) {
      for (int k = kg; k < kt; k += groups) {
        const double2* row = reinterpret_cast<const double2*>(smem + k * ld);
        const double2 a01 = row[2 * ti], a23 = row[2 * ti + 1];
        const double2 b01 = row[2 * tj], b23 = row[2 * tj + 1];
        const double a[4] = {a01.x, a01.y, a23.x, a23.y};
        const double b[4] = {b01.x, b01.y, b23.x, b23.y};
#pragma unroll
        for (int u = 0; u < 4; ++u)
#pragma unroll
          for (int v = 0; v < 4; ++v) acc[u * 4 + v] = fma(a[u], b[v], acc[u * 4 + v]);
      }
    }
    __syncthreads();
  }
  // reduce over the k-groups one group at a time (fixed order: deterministic), then write the
  // upper-triangle tiles of this chunk's partial Gram
  for (int g = 0; g < groups; ++g) {
    if (active && kg == g)
      for (int e = 0; e < 16; ++e) smem[tile * 16 + e] = (g == 0 ? 0.0 : smem[tile * 16 + e]) + acc[e];
    __syncthreads();
  }
  for (int idx = tid; idx < ntiles * 16; idx += kThreads) {
    const int tl = idx / 16, e = idx - tl * 16;
    int a = 0;
    const int t = rp / 4;
    int rem = tl;
    while (rem >= t - a) {
      rem -= t - a;
      ++a;
    }
    const int i = 4 * a + e / 4, j = 4 * (a + rem) + e % 4;
    if (i < r && j < r) partials[ch.part_off + static_cast<long long>(i) * r + j] = smem[idx];
  }
}

// ---- r × r phase ---------------------------------------------------------------------------------

// C (r × r, row stride ldc) = op(A) op(B), A, B with row stride ld; C must not alias A or B.
__device__ void bmm(int r, int ld, const double* A, bool ta, const double* B, bool tb, double* C, int ldc) {
  for (int idx = threadIdx.x; idx < r * r; idx += blockDim.x) {
    const int i = idx / r, j = idx - i * r;
    double s = 0.0;
    for (int k = 0; k < r; ++k) s = fma(ta ? A[k * ld + i] : A[i * ld + k], tb ? B[j * ld + k] : B[k * ld + j], s);
    C[i * ldc + j] = s;
  }
  __syncthreads();
}

// Parallel cyclic Jacobi on the symmetric n × n matrix M (n even, row stride ld), round-robin pairs
// (n/2 disjoint rotations per step, n − 1 steps per sweep). On return diag(M) holds the eigenvalues
// and the rows of Vt the eigenvectors. Each thread updates whole 2 × 2 blocks in place.
__device__ void jacobi_eigh(int n, int ld, double* M, double* Vt, double* cs, int* pq, int* flag, double* scal) {
  const int h = n / 2;
  // Rotate (p, q) only while |m_pq| > 1e-15·√|m_pp m_qq| (relative accuracy for small eigenvalues)
  // and > 1e-16·max|m_ii| (round-off fill-in below that would keep the sweeps going forever).
  if (threadIdx.x == 0) {
    double mx = 0.0;
    for (int i = 0; i < n; ++i) mx = fmax(mx, fabs(M[i * ld + i]));
    *scal = 1e-16 * mx;
  }
  __syncthreads();
  const double tol_abs = *scal;
  for (int idx = threadIdx.x; idx < n * n; idx += blockDim.x) {
    const int i = idx / n, j = idx - i * n;
    Vt[i * ld + j] = i == j ? 1.0 : 0.0;
  }
  __syncthreads();
  for (int sweep = 0; sweep < 20; ++sweep) {
    if (threadIdx.x == 0) *flag = 0;
    __syncthreads();
    for (int step = 0; step < n - 1; ++step) {
      for (int a = threadIdx.x; a < h; a += blockDim.x) {
        int p, q;
        if (a == 0) {
          p = 0;
          q = 1 + step % (n - 1);
        } else {
          p = 1 + (a + step) % (n - 1);
          q = 1 + (n - 1 - a + step) % (n - 1);
        }
        if (p > q) {
          const int t = p;
          p = q;
          q = t;
        }
        const double app = M[p * ld + p], aqq = M[q * ld + q], apq = M[p * ld + q];
        double c = 1.0, s = 0.0;
        if (fabs(apq) > tol_abs && fabs(apq) > 1e-15 * sqrt(fabs(app * aqq))) {
          const double tau = (aqq - app) / (2.0 * apq);
          const double t = (tau >= 0.0 ? 1.0 : -1.0) / (fabs(tau) + sqrt(1.0 + tau * tau));
          c = rsqrt(1.0 + t * t);
          s = t * c;
          *flag = 1;
        }
        pq[2 * a] = p;
        pq[2 * a + 1] = q;
        cs[2 * a] = c;
        cs[2 * a + 1] = s;
      }
      __syncthreads();
      // M ← Jᵀ M J block by block; Vt rows p, q ← rotated
      for (int idx = threadIdx.x; idx < h * h + h * n; idx += blockDim.x) {
        if (idx < h * h) {
          const int a = idx / h, b = idx - a * h;
          const int p = pq[2 * a], q = pq[2 * a + 1], u = pq[2 * b], v = pq[2 * b + 1];
          const double ca = cs[2 * a], sa = cs[2 * a + 1], cb = cs[2 * b], sb = cs[2 * b + 1];
          const double xpu = M[p * ld + u], xpv = M[p * ld + v], xqu = M[q * ld + u], xqv = M[q * ld + v];
          // rows: Jᵀ_a, then columns: J_b
          const double ypu = ca * xpu - sa * xqu, ypv = ca * xpv - sa * xqv;
          const double yqu = sa * xpu + ca * xqu, yqv = sa * xpv + ca * xqv;
          M[p * ld + u] = cb * ypu - sb * ypv;
          M[p * ld + v] = sb * ypu + cb * ypv;
          M[q * ld + u] = cb * yqu - sb * yqv;
          M[q * ld + v] = sb * yqu + cb * yqv;
          if (a == b && sa != 0.0) M[p * ld + q] = M[q * ld + p] = 0.0;
        } else {
          const int e = idx - h * h;
          const int a = e / n, k = e - a * n;
          const double c = cs[2 * a], s = cs[2 * a + 1];
          if (s != 0.0) {
            const int p = pq[2 * a], q = pq[2 * a + 1];
            const double vp = Vt[p * ld + k], vq = Vt[q * ld + k];
            Vt[p * ld + k] = c * vp - s * vq;
            Vt[q * ld + k] = s * vp + c * vq;
          }
        }
      }
      __syncthreads();
    }
    if (*flag == 0) break;
    __syncthreads();
  }
  __syncthreads();
}

size_t rxr_smem_bytes(int rmax) {
  const int n = (rmax + 1) / 2 * 2;
  return 6 * static_cast<size_t>(n) * n * sizeof(double) + (5 * static_cast<size_t>(n) + 16) * sizeof(double) +
         (2 * static_cast<size_t>(n) + 4) * sizeof(int);
}

__global__ void __launch_bounds__(kThreads) rxr_kernel(const PairDesc* __restrict__ pairs,
                                                       const ChunkDesc* __restrict__ chunks,
                                                       const double* __restrict__ partials, int mode, int need,
                                                       double* __restrict__ values, double* __restrict__ factors,
                                                       double* __restrict__ grams_out, float* __restrict__ sigma_out,
                                                       int rmax) {
  extern __shared__ __align__(16) double smem[];
  const PairDesc pd = pairs[blockIdx.x];
  const int r = pd.r;
  const int n = (r + 1) / 2 * 2;  // even size for the Jacobi pairing (one zero pad row/column)
  const int nmax = (rmax + 1) / 2 * 2;
  const int ld = n;
  const int mat = nmax * nmax;
  double* P = smem;
  double* Q = P + mat;
  double* R = Q + mat;
  double* T = R + mat;
  double* W = T + mat;
  double* X = W + mat;
  double* lam = X + mat;  // 5 vectors of nmax, then 16 scalars
  double* sig = lam + nmax;
  double* sv = sig + nmax;
  double* gos = sv + nmax;
  double* cs = gos + nmax;   // Jacobi (c, s) of the nmax/2 rotations of a step
  double* scal = cs + nmax;  // [0] tr P, [1] tr Q, [2] s2, [3] s4, [4] min pivot², [6] Jacobi tolerance
  int* pq = reinterpret_cast<int*>(scal + 16);  // nmax: Jacobi (p, q) pairs
  int* perm = pq + nmax;                         // nmax
  int* flags = perm + nmax;                      // [0] Jacobi rotated, [1] status, [2] Cholesky ok
  const int tid = threadIdx.x;
  const size_t rr = static_cast<size_t>(r) * r;

  // sum the chunks' partial Grams (upper triangles) in a fixed order, mirror to full matrices
  for (int idx = tid; idx < n * n; idx += blockDim.x) {
    const int i = idx / n, j = idx - i * n;
    double p = 0.0, q = 0.0;
    if (i < r && j < r) {
      const int a = i < j ? i : j, b = i < j ? j : i;
      const long long off = static_cast<long long>(a) * r + b;
      for (int c = 0; c < pd.p_nchunks; ++c) p += partials[chunks[pd.p_chunk0 + c].part_off + off];
      for (int c = 0; c < pd.q_nchunks; ++c) q += partials[chunks[pd.q_chunk0 + c].part_off + off];
    }
    P[i * ld + j] = p;
    Q[i * ld + j] = q;
  }
  __syncthreads();
  if (mode == kModeGrams) {
    for (int idx = tid; idx < r * r; idx += blockDim.x) {
      const int i = idx / r, j = idx - i * r;
      grams_out[pd.gram_off + idx] = P[i * ld + j];
      grams_out[pd.gram_off + rr + idx] = Q[i * ld + j];
    }
    return;
  }
  // status: 0 ok, 1 non-finite input, 2 zero pair
  if (tid == 0) {
    double trP = 0.0, trQ = 0.0;
    for (int i = 0; i < r; ++i) {
      trP += P[i * ld + i];
      trQ += Q[i * ld + i];
    }
    scal[0] = trP;
    scal[1] = trQ;
    flags[1] = (!isfinite(trP) || !isfinite(trQ)) ? 1 : ((trP <= kMinGram || trQ <= kMinGram) ? 2 : 0);
  }
  __syncthreads();
  double* FB = factors ? factors + pd.fac_off : nullptr;
  double* FA = FB ? FB + rr : nullptr;
  auto finish_const = [&](double value, double sigma) {
    if (tid == 0 && mode != kSingularValues) values[blockIdx.x] = value;
    if (mode == kSingularValues)
      for (int t = tid; t < r; t += blockDim.x) sigma_out[pd.sig_off + t] = static_cast<float>(sigma);
    if (need && FB)
      for (size_t idx = tid; idx < 2 * rr; idx += blockDim.x) FB[idx] = 0.0;
  };
  if (flags[1] != 0) {
    finish_const(flags[1] == 1 ? nan("") : 0.0, flags[1] == 1 ? nan("") : 0.0);
    return;
  }
  const double trP = scal[0], trQ = scal[1];

  if (mode == kParticipation) {
    if (r == 1) {
      finish_const(0.0, 0.0);
      return;
    }
    bmm(r, ld, P, false, Q, false, X, ld);  // M = P Q
    if (tid == 0) {
      double s2 = 0.0, s4 = 0.0;
      for (int i = 0; i < r; ++i) {
        s2 += X[i * ld + i];
        for (int j = 0; j < r; ++j) s4 += X[i * ld + j] * X[j * ld + i];
      }
      scal[2] = s2;
      scal[3] = s4;
      values[blockIdx.x] = 1.0 - s2 * s2 / (r * s4);
    }
    __syncthreads();
    if (!need) return;
    const double s2 = scal[2], s4 = scal[3];
    const double c1 = -4.0 * s2 / (r * s4), c3 = 4.0 * s2 * s2 / (r * s4 * s4);
    bmm(r, ld, Q, false, P, false, W, ld);
    for (int idx = tid; idx < r * r; idx += blockDim.x) {
      const int i = idx / r, j = idx - i * r;
      W[i * ld + j] = c3 * W[i * ld + j] + (i == j ? c1 : 0.0);  // N
    }
    __syncthreads();
    bmm(r, ld, W, false, Q, false, FB, r);
    bmm(r, ld, P, false, W, false, FA, r);
    return;
  }

  // ---- P = R Rᵀ: Cholesky (R lower triangular) when safely positive definite
  for (int idx = tid; idx < n * n; idx += blockDim.x) R[idx] = 0.0;
  if (tid == 0) {
    flags[2] = 1;  // ok
    scal[4] = 1e300;  // min pivot²
  }
  __syncthreads();
  for (int j = 0; j < r; ++j) {
    if (tid == 0) {
      double d = P[j * ld + j];
      for (int k = 0; k < j; ++k) d -= R[j * ld + k] * R[j * ld + k];
      if (!(d > 0.0)) {
        flags[2] = 0;
      } else {
        R[j * ld + j] = sqrt(d);
        scal[4] = fmin(scal[4], d);
      }
    }
    __syncthreads();
    if (!flags[2]) break;
    for (int i = j + 1 + tid; i < r; i += blockDim.x) {
      double v = P[i * ld + j];
      for (int k = 0; k < j; ++k) v -= R[i * ld + k] * R[j * ld + k];
      R[i * ld + j] = v / R[j * ld + j];
    }
    __syncthreads();
  }
  if (tid == 0) {
    double maxdiag = 0.0;
    for (int i = 0; i < r; ++i) maxdiag = fmax(maxdiag, P[i * ld + i]);
    flags[2] = flags[2] && scal[4] > kCholTol * maxdiag;
  }
  __syncthreads();
  if (flags[2]) {
    // T = L⁻ᵀ: thread j solves column j of L⁻¹ (= row j of T)
    for (int j = tid; j < r; j += blockDim.x) {
      for (int i = 0; i < r; ++i) T[j * ld + i] = 0.0;
      T[j * ld + j] = 1.0 / R[j * ld + j];
      for (int i = j + 1; i < r; ++i) {
        double v = 0.0;
        for (int k = j; k < i; ++k) v += R[i * ld + k] * T[j * ld + k];
        T[j * ld + i] = -v / R[i * ld + i];
      }
    }
    __syncthreads();
  } else {
    // eigen route: P = E Λ Eᵀ, R = E Λ^½, T = E Λ^-½ (λ ≤ kEigTol·λ_max dropped)
    for (int idx = tid; idx < n * n; idx += blockDim.x) X[idx] = P[idx];
    __syncthreads();
    jacobi_eigh(n, ld, X, W, cs, pq, flags, scal + 6);
    if (tid == 0) {
      double lmax = 0.0;
      for (int t = 0; t < r; ++t) lmax = fmax(lmax, X[t * ld + t]);
      for (int t = 0; t < r; ++t) {
        const double l = X[t * ld + t];
        const bool keep = l > kEigTol * lmax;
        sv[t] = keep ? sqrt(l) : 0.0;
        gos[t] = keep ? 1.0 / sv[t] : 0.0;
      }
    }
    __syncthreads();
    for (int idx = tid; idx < r * r; idx += blockDim.x) {
      const int i = idx / r, t = idx - i * r;
      R[i * ld + t] = W[t * ld + i] * sv[t];
      T[i * ld + t] = W[t * ld + i] * gos[t];
    }
    __syncthreads();
  }
  // ---- K = Rᵀ Q R (in X, zero pad row/column), eigen-decomposition
  bmm(r, ld, Q, false, R, false, W, ld);
  bmm(r, ld, R, true, W, false, X, ld);
  for (int idx = tid; idx < n * n; idx += blockDim.x) {
    const int i = idx / n, j = idx - i * n;
    if (i >= r || j >= r) X[idx] = 0.0;
    else if (i < j) {
      const double v = 0.5 * (X[i * ld + j] + X[j * ld + i]);
      X[i * ld + j] = v;
      X[j * ld + i] = v;
    }
  }
  __syncthreads();
  jacobi_eigh(n, ld, X, W, cs, pq, flags, scal + 6);
  if (tid == 0) {  // descending order of the r true eigenvalues (the pad index keeps eigenvalue 0, e_pad)
    for (int t = 0; t < r; ++t) {
      lam[t] = X[t * ld + t];
      perm[t] = t;
    }
    for (int a = 0; a < r; ++a) {
      int best = a;
      for (int b = a + 1; b < r; ++b)
        if (lam[perm[b]] > lam[perm[best]]) best = b;
      const int tmp = perm[a];
      perm[a] = perm[best];
      perm[best] = tmp;
    }
    for (int t = 0; t < r; ++t) sig[t] = sqrt(fmax(lam[perm[t]], 0.0));
  }
  __syncthreads();
  if (mode == kSingularValues) {
    for (int t = tid; t < r; t += blockDim.x) sigma_out[pd.sig_off + t] = static_cast<float>(sig[t]);
    return;
  }
  if (!(sig[0] * sig[0] > kZeroProduct * kZeroProduct * trP * trQ)) {
    finish_const(0.0, 0.0);
    return;
  }
  if (tid == 0) {
    for (int t = 0; t < r; ++t) sv[t] = sig[t] > kSigmaTol * sig[0] ? sig[t] : 0.0;
    values[blockIdx.x] = kind_value_and_gos(mode, r, sv, gos);
  }
  __syncthreads();
  if (!need) return;
  // H = V diag(g/σ) Vᵀ (X), M1 = T H (W), N = M1 Rᵀ (X), FB = N Q, FA = P N
  for (int idx = tid; idx < r * r; idx += blockDim.x) {
    const int i = idx / r, j = idx - i * r;
    double s = 0.0;
    for (int t = 0; t < r; ++t) {
      const double g = gos[t];
      if (g != 0.0) s += g * W[perm[t] * ld + i] * W[perm[t] * ld + j];
    }
    X[i * ld + j] = s;
  }
  __syncthreads();
  bmm(r, ld, T, false, X, false, W, ld);
  bmm(r, ld, W, false, R, true, X, ld);
  bmm(r, ld, X, false, Q, false, FB, r);
  bmm(r, ld, P, false, X, false, FA, r);
}

// ---- pass 2: apply the factors -------------------------------------------------------------------

template <typename acc_t>
__device__ void apply_chunk(const PairDesc& pd, const ChunkDesc& ch, const double* factors, double g, acc_t* sm) {
  const int r = pd.r;
  const int rp = (r + 3) / 4 * 4;
  const int ldf = rp;
  acc_t* F = sm;             // rp × rp, zero padded
  acc_t* S = F + rp * ldf;   // staging tile
  const double* src = factors + pd.fac_off + (ch.side == 0 ? 0 : static_cast<long long>(r) * r);
  for (int idx = threadIdx.x; idx < rp * rp; idx += blockDim.x) {
    const int i = idx / rp, j = idx - i * rp;
    F[i * ldf + j] = (i < r && j < r) ? static_cast<acc_t>(g * src[i * r + j]) : acc_t(0);
  }
  const int nb = rp / 4;
  if (ch.side == 0) {  // gB rows = B rows · FB
    const int lds = rp;
    for (long long k0 = 0; k0 < ch.len; k0 += kTileK) {
      const int kt = ch.len - k0 < kTileK ? static_cast<int>(ch.len - k0) : kTileK;
      const long long base = (ch.start + k0) * r;
      __syncthreads();
      for (int idx = threadIdx.x; idx < kTileK * rp; idx += blockDim.x) {
        const int k = idx / rp, i = idx - k * rp;
        S[k * lds + i] = (k < kt && i < r) ? load_as<acc_t>(pd.B, pd.dtB, base + static_cast<long long>(k) * r + i) : acc_t(0);
      }
      __syncthreads();
      for (int it = threadIdx.x; it < kt * nb; it += blockDim.x) {
        const int k = it / nb, jb = it - k * nb;
        acc_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        for (int i = 0; i < r; ++i) {
          const acc_t s = S[k * lds + i];
          const acc_t* f = F + i * ldf + 4 * jb;
          a0 += s * f[0];
          a1 += s * f[1];
          a2 += s * f[2];
          a3 += s * f[3];
        }
        const long long o = base + static_cast<long long>(k) * r + 4 * jb;
        const acc_t av[4] = {a0, a1, a2, a3};
        for (int c = 0; c < 4 && 4 * jb + c < r; ++c) store_as<acc_t>(pd.gB, pd.dtB, o + c, av[c]);
      }
    }
  } else {  // gA columns = FA · A columns
    const int lds = kTileK;
    for (long long k0 = 0; k0 < ch.len; k0 += kTileK) {
      const int kt = ch.len - k0 < kTileK ? static_cast<int>(ch.len - k0) : kTileK;
      __syncthreads();
      for (int idx = threadIdx.x; idx < r * kTileK; idx += blockDim.x) {
        const int j = idx / kTileK, k = idx - j * kTileK;
        S[j * lds + k] = k < kt ? load_as<acc_t>(pd.A, pd.dtA, static_cast<long long>(j) * pd.n + ch.start + k0 + k) : acc_t(0);
      }
      __syncthreads();
      for (int it = threadIdx.x; it < nb * kTileK; it += blockDim.x) {
        const int ib = it / kTileK, k = it - ib * kTileK;
        if (k >= kt) continue;
        acc_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        const acc_t* f = F + 4 * ib * ldf;
        for (int j = 0; j < r; ++j) {
          const acc_t s = S[j * lds + k];
          a0 += f[j] * s;
          a1 += f[ldf + j] * s;
          a2 += f[2 * ldf + j] * s;
          a3 += f[3 * ldf + j] * s;
        }
        const acc_t av[4] = {a0, a1, a2, a3};
        for (int a = 0; a < 4 && 4 * ib + a < r; ++a)
          store_as<acc_t>(pd.gA, pd.dtA, static_cast<long long>(4 * ib + a) * pd.n + ch.start + k0 + k, av[a]);
      }
    }
  }
}

__host__ __device__ inline size_t apply_smem_elems(int r) {
  const int rp = (r + 3) / 4 * 4;
  const size_t st = static_cast<size_t>(kTileK) * rp;
  return static_cast<size_t>(rp) * rp + st;
}

__global__ void __launch_bounds__(kThreads) apply_kernel(const PairDesc* __restrict__ pairs,
                                                         const ChunkDesc* __restrict__ chunks,
                                                         const double* __restrict__ factors,
                                                         const double* __restrict__ grad_values) {
  extern __shared__ __align__(16) double smem[];
  const ChunkDesc ch = chunks[blockIdx.x];
  const PairDesc pd = pairs[ch.pair];
  const double g = grad_values[ch.pair];
  const int dt = ch.side == 0 ? pd.dtB : pd.dtA;
  if (dt == kF64) apply_chunk<double>(pd, ch, factors, g, smem);
  else apply_chunk<float>(pd, ch, factors, g, reinterpret_cast<float*>(smem));
}

// ---- launchers -----------------------------------------------------------------------------------

static size_t max_over_r(int rmax, size_t (*f)(int)) {
  size_t m = 0;
  for (int r = 1; r <= rmax; ++r) m = f(r) > m ? f(r) : m;
  return m;
}

static size_t gram_bytes(int r) { return gram_smem_doubles(r) * sizeof(double); }
static size_t apply_bytes(int r) { return apply_smem_elems(r) * sizeof(double); }

cudaError_t launch_gram(const PairDesc* pairs, const ChunkDesc* chunks, int nchunks, double* partials, int rmax,
                        cudaStream_t stream) {
  if (nchunks == 0) return cudaSuccess;
  const size_t smem = max_over_r(rmax, gram_bytes);
  if (smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(gram_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  gram_kernel<<<nchunks, kThreads, smem, stream>>>(pairs, chunks, partials);
  return cudaGetLastError();
}

cudaError_t launch_rxr(const PairDesc* pairs, int npairs, const ChunkDesc* chunks, const double* partials, int mode,
                       int need, double* values, double* factors, double* grams_out, float* sigma_out, int rmax,
                       cudaStream_t stream) {
  if (npairs == 0) return cudaSuccess;
  const size_t smem = rxr_smem_bytes(rmax);
  if (smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(rxr_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  rxr_kernel<<<npairs, kThreads, smem, stream>>>(pairs, chunks, partials, mode, need, values, factors, grams_out,
                                                  sigma_out, rmax);
  return cudaGetLastError();
}

cudaError_t launch_apply(const PairDesc* pairs, const ChunkDesc* chunks, int nchunks, const double* factors,
                         const double* grad_values, int rmax, cudaStream_t stream) {
  if (nchunks == 0) return cudaSuccess;
  const size_t smem = max_over_r(rmax, apply_bytes);
  if (smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(apply_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  apply_kernel<<<nchunks, kThreads, smem, stream>>>(pairs, chunks, factors, grad_values);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace spectral
}  // namespace evilbench
