// Gram-form Newton–Schulz on CUDA (maths: evilbench/kernels/newton_schulz_op.py), torch-free: raw pointers + cudaStream_t.
//
// Three launches per rank bucket R in {16, 32, 64}, whatever the number of matrices:
//   1. ns_gram_kernel:  one block per column chunk of every matrix; tiles of X go to shared memory
//      as three bf16 parts x = hi + mid + lo (exact for fp32's 24-bit significand), and tensor
//      cores accumulate G = X Xᵀ in fp32 from the six products of order >= 2^-16 (bf16 inputs
//      are exact in hi: one product). Fewer parts are not enough: M = p(Ĝ) reaches ~a^k = 485 on
//      small singular directions, which amplifies any 2^-17-level rounding of X, G or M to ~4e-3.
//      Muon: the momentum update (+ Nesterov) happens here, once per element.
//      Each block writes its partial Gram and (max |x|, NaN/Inf flag) to the workspace.
//   2. ns_small_kernel: one block per matrix sums the partials, normalises (s = 1/(||X|| + eps)
//      from tr G), runs the r x r iteration in fp32 shared memory and writes M'' = s M.
//      Over/underflowing ||X||² (|x| > ~1e19 or < ~1e-19) is redone at a power-of-two scale.
//      When Ĝ is too ill-conditioned for fp32 (λ_min(Ĝ) < gram_min_eig(), a float64 Cholesky test;
//      see ns_common.h) the block instead recomputes G from X in float64, runs the iteration in
//      float64 and flags the matrix, whose apply then runs in float64 too: the same rule and maths
//      as the CPU kernels' float64 fallback, without a host sync.
//   3. ns_apply_kernel: one block per chunk computes out = M'' X on tensor cores (M'' split in
//      three parts the same way) and writes the output (Muon: p = p*decay - lr*out).
// The work table lives on the device (NsMat, 64-bit offsets); blocks find their matrix by binary
// search over chunk_begin. No host synchronisation anywhere: CUDA-graph capturable.
#include "newton_schulz.cuh"
#include "../ns_common.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cfloat>
#include <cstdint>

namespace evilbench {
namespace ns_cuda {
namespace {

using namespace nvcuda;

constexpr int kThreads = 256;

__device__ __forceinline__ int64_t imin64(int64_t a, int64_t b) { return a < b ? a : b; }

template <int R>
struct Cfg {
  static constexpr int TK = (R == 64) ? 32 : 128;  // columns per shared-memory tile
  static constexpr int TKP = TK + 8;               // padded bf16 row stride
  static constexpr int OLD = TK + 4;               // padded fp32 row stride of the output tile
  static constexpr int MLD = R + 8;                // padded bf16 row stride of M''
  static constexpr int CH = (R == 16) ? 2048 : (R == 32 ? 1024 : 512);  // columns per block
  static constexpr int NF = (R / 16) * (R / 16);   // 16x16 fragments of G
  static constexpr int FPW = NF >= 8 ? NF / 8 : 1; // fragments per warp
  static constexpr int KSPLIT = NF >= 8 ? 1 : 8 / NF;  // warps sharing a fragment (split over k)
  static constexpr int KSTEPS = TK / 16;
  static constexpr int NFO = (R / 16) * (TK / 16);  // output fragments per tile
  static constexpr int FOPW = NFO / 8;
  static_assert(NFO % 8 == 0, "output fragments must split over 8 warps");
};

// ---- element access ----------------------------------------------------------------------------
__device__ __forceinline__ float ld1(const void* p, int dt, int64_t o) {
  if (dt == kF32) return static_cast<const float*>(p)[o];
  const unsigned short h = static_cast<const unsigned short*>(p)[o];
  return dt == kBF16 ? __bfloat162float(__ushort_as_bfloat16(h)) : __half2float(__ushort_as_half(h));
}
__device__ __forceinline__ void st1(void* p, int dt, int64_t o, float v) {
  if (dt == kF32) {
    static_cast<float*>(p)[o] = v;
  } else {
    static_cast<unsigned short*>(p)[o] =
        dt == kBF16 ? __bfloat16_as_ushort(__float2bfloat16_rn(v)) : __half_as_ushort(__float2half_rn(v));
  }
}
// value as stored in dtype dt (rounding round trip)
__device__ __forceinline__ float rt(int dt, float v) {
  if (dt == kF32) return v;
  return dt == kBF16 ? __bfloat162float(__float2bfloat16_rn(v)) : __half2float(__float2half_rn(v));
}
// 8 consecutive elements, 16-byte aligned (kVec)
__device__ __forceinline__ void ld8(const void* p, int dt, int64_t o, float v[8]) {
  if (dt == kF32) {
    const float4* q = reinterpret_cast<const float4*>(static_cast<const float*>(p) + o);
    float4 a = q[0], b = q[1];
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    return;
  }
  uint4 u = *reinterpret_cast<const uint4*>(static_cast<const unsigned short*>(p) + o);
  const unsigned int w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const unsigned short lo = (unsigned short)(w[q] & 0xffffu), hi = (unsigned short)(w[q] >> 16);
    if (dt == kBF16) {
      v[2 * q] = __bfloat162float(__ushort_as_bfloat16(lo));
      v[2 * q + 1] = __bfloat162float(__ushort_as_bfloat16(hi));
    } else {
      v[2 * q] = __half2float(__ushort_as_half(lo));
      v[2 * q + 1] = __half2float(__ushort_as_half(hi));
    }
  }
}
__device__ __forceinline__ void st8(void* p, int dt, int64_t o, const float v[8]) {
  if (dt == kF32) {
    float4* q = reinterpret_cast<float4*>(static_cast<float*>(p) + o);
    q[0] = make_float4(v[0], v[1], v[2], v[3]);
    q[1] = make_float4(v[4], v[5], v[6], v[7]);
    return;
  }
  unsigned int w[4];
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    unsigned short a, b;
    if (dt == kBF16) {
      a = __bfloat16_as_ushort(__float2bfloat16_rn(v[2 * q]));
      b = __bfloat16_as_ushort(__float2bfloat16_rn(v[2 * q + 1]));
    } else {
      a = __half_as_ushort(__float2half_rn(v[2 * q]));
      b = __half_as_ushort(__float2half_rn(v[2 * q + 1]));
    }
    w[q] = (unsigned int)a | ((unsigned int)b << 16);
  }
  *reinterpret_cast<uint4*>(static_cast<unsigned short*>(p) + o) = make_uint4(w[0], w[1], w[2], w[3]);
}

// U for Muon from gradient g and buffer b (torch.optim.Muon): b <- b + (1-m)(g-b) (when update,
// stored rounded to the dtype); U = nesterov ? g + m(b - g) : b.
__device__ __forceinline__ float muon_u(float g, float& b, int dt, bool update, const NsLaunch& a) {
  if (update) b = rt(dt, b + (1.f - a.momentum) * (g - b));
  return a.nesterov ? g + a.momentum * (b - g) : b;
}

// Values of X for a group of 8 consecutive elements along the contiguous dimension starting at
// offset o (n valid, the rest 0). Muon pass 1 (update) also writes the momentum buffer back.
__device__ __forceinline__ void load_group(const NsMat& m, const NsLaunch& a, bool update, int64_t o, int n,
                                           float v[8]) {
  const int dt = m.dtype;
  const bool vec = (m.flags & kVec) && n == 8;
  if (!a.muon) {
    if (vec) {
      ld8(m.src, dt, o, v);
    } else {
#pragma unroll
      for (int q = 0; q < 8; ++q) v[q] = q < n ? ld1(m.src, dt, o + q) : 0.f;
    }
    return;
  }
  float g[8], b[8];
  if (vec) {
    ld8(m.src, dt, o, g);
    ld8(m.buf, dt, o, b);
  } else {
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      g[q] = q < n ? ld1(m.src, dt, o + q) : 0.f;
      b[q] = q < n ? ld1(m.buf, dt, o + q) : 0.f;
    }
  }
#pragma unroll
  for (int q = 0; q < 8; ++q) v[q] = muon_u(g[q], b[q], dt, update, a);
  if (update) {
    if (vec) {
      st8(m.buf, dt, o, b);
    } else {
#pragma unroll
      for (int q = 0; q < 8; ++q)
        if (q < n) st1(m.buf, dt, o + q, b[q]);
    }
  }
}

// Single element of X (slow rescale path; Muon reads the already-updated buffer).
__device__ __forceinline__ float x_at(const NsMat& m, const NsLaunch& a, int i, int64_t k) {
  const int64_t o = (m.flags & kTall) ? k * m.ld_src + i : (int64_t)i * m.ld_src + k;
  if (!a.muon) return ld1(m.src, m.dtype, o);
  float b = ld1(m.buf, m.dtype, o);
  return muon_u(ld1(m.src, m.dtype, o), b, m.dtype, false, a);
}

// x = hi + mid + lo, each bf16 (exact for normal fp32 x barring underflow of the parts)
__device__ __forceinline__ void split3(float x, __nv_bfloat16& hi, __nv_bfloat16& mid, __nv_bfloat16& lo) {
  hi = __float2bfloat16_rn(x);
  const float r1 = x - __bfloat162float(hi);
  mid = __float2bfloat16_rn(r1);
  lo = __float2bfloat16_rn(r1 - __bfloat162float(mid));
}

// A thread's share of one tile, fetched into registers ahead of use (the next tile's loads are in
// flight while the tensor cores work on the current one).
template <int R>
struct TileRegs {
  static constexpr int G = R * Cfg<R>::TK / 8 / kThreads;  // groups of 8 values per thread
  static_assert(G >= 1 && R * Cfg<R>::TK / 8 == G * kThreads, "tile groups must split over the block");
  float v[G][8];
};

// Group g of a tile covers (i0, kk0 .. kk0+7) when wide, (i0 .. i0+7, kk0) when tall.
template <int R>
__device__ __forceinline__ void group_pos(bool tall, int gidx, int& i0, int& kk0) {
  using C = Cfg<R>;
  if (!tall) {
    i0 = gidx / (C::TK / 8);
    kk0 = 8 * (gidx % (C::TK / 8));
  } else {
    kk0 = gidx % C::TK;
    i0 = 8 * (gidx / C::TK);
  }
}

// Fetch X[:, k0 : k0 + TK] into registers (zeros outside r x d). Muon pass 1 updates the buffer.
template <int R>
__device__ __forceinline__ void fetch_tile(const NsMat& m, const NsLaunch& a, bool update, int64_t k0, TileRegs<R>& tr) {
  const bool tall = m.flags & kTall;
#pragma unroll
  for (int g = 0; g < TileRegs<R>::G; ++g) {
    int i0, kk0;
    group_pos<R>(tall, threadIdx.x + g * kThreads, i0, kk0);
    const int64_t k = k0 + kk0;
    int n;
    int64_t o;
    if (!tall) {
      n = (i0 < m.r && k < m.d) ? (int)imin64(8, m.d - k) : 0;
      o = (int64_t)i0 * m.ld_src + k;
    } else {
      n = (k < m.d && i0 < m.r) ? min(8, m.r - i0) : 0;
      o = k * m.ld_src + i0;
    }
    if (n > 0) {
      load_group(m, a, update, o, n, tr.v[g]);
    } else {
#pragma unroll
      for (int q = 0; q < 8; ++q) tr.v[g][q] = 0.f;
    }
  }
}

__device__ __forceinline__ uint4 pack8(const __nv_bfloat16 h[8]) {
  unsigned int w[4];
#pragma unroll
  for (int q = 0; q < 4; ++q)
    w[q] = (unsigned int)__bfloat16_as_ushort(h[2 * q]) | ((unsigned int)__bfloat16_as_ushort(h[2 * q + 1]) << 16);
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// Registers (times t) -> X3 = [hi | mid | lo], each R x TKP bf16 (mid/lo only when split).
// Tracks max |x| and NaN/Inf for the Gram pass.
template <int R>
__device__ __forceinline__ void commit_tile(const TileRegs<R>& tr, bool tall, float t, bool split,
                                            __nv_bfloat16* X3, float& amax, int& bad) {
  using C = Cfg<R>;
  constexpr int P = R * C::TKP;
#pragma unroll
  for (int g = 0; g < TileRegs<R>::G; ++g) {
    int i0, kk0;
    group_pos<R>(tall, threadIdx.x + g * kThreads, i0, kk0);
    __nv_bfloat16 h[3][8];
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      const float v = tr.v[g][q];
      const float ax = fabsf(v);
      if (!(ax <= FLT_MAX)) bad = 1;
      else amax = fmaxf(amax, ax);
      if (split) split3(v * t, h[0][q], h[1][q], h[2][q]);
      else h[0][q] = __float2bfloat16_rn(v * t);  // exact: bf16 input times a power of two
    }
    const int parts = split ? 3 : 1;
    if (!tall) {  // 8 consecutive columns of one row: one 16-byte store per part
      for (int pt = 0; pt < parts; ++pt)
        *reinterpret_cast<uint4*>(X3 + pt * P + i0 * C::TKP + kk0) = pack8(h[pt]);
    } else {
      for (int pt = 0; pt < parts; ++pt)
#pragma unroll
        for (int q = 0; q < 8; ++q) X3[pt * P + (i0 + q) * C::TKP + kk0] = h[pt][q];
    }
  }
}

__device__ __forceinline__ int find_matrix(const NsMat* table, int n, int64_t chunk) {
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (table[mid].chunk_begin <= chunk) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

struct WsView {
  float* part;   // nchunk * R * R
  float* stats;  // nchunk * 2
  float* M;      // R * R
  float* t;      // [0] the power-of-two scale t, [1] 1 when the float64 path ran (padded to 4)
  double* M64;   // R * R: s M in float64 (float64 path only)
};
template <int R>
__device__ __forceinline__ WsView ws_view(const NsMat& m, float* ws) {
  WsView v;
  v.part = ws + m.ws;
  v.stats = v.part + (int64_t)m.nchunk * R * R;
  v.M = v.stats + 2 * (int64_t)m.nchunk;
  v.t = v.M + R * R;
  v.M64 = reinterpret_cast<double*>(v.t + 4);  // every offset before it is even: 8-byte aligned
  return v;
}

// ---- 1. Gram --------------------------------------------------------------------------------------
template <int R>
__global__ void __launch_bounds__(kThreads) ns_gram_kernel(NsLaunch a) {
#if __CUDA_ARCH__ >= 800
  using C = Cfg<R>;
  constexpr int P = R * C::TKP;  // one part of the tile
  __shared__ __align__(128) __nv_bfloat16 X3[3 * P];
  __shared__ __align__(128) float Red[C::KSPLIT * R * R];
  __shared__ unsigned int s_amax;
  __shared__ int s_bad;

  const int mi = find_matrix(a.table, a.n_mats, blockIdx.x);
  const NsMat m = a.table[mi];
  const int64_t chunk = (int64_t)blockIdx.x - m.chunk_begin;
  const int64_t kbeg = chunk * C::CH;
  const int64_t kend = imin64(m.d, kbeg + C::CH);
  const bool split = a.muon || m.dtype != kBF16;
  if (threadIdx.x == 0) {
    s_amax = 0u;
    s_bad = 0;
  }
  const int warp = threadIdx.x / 32;
  const int fbase = (warp / C::KSPLIT) * C::FPW, kpart = warp % C::KSPLIT;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[C::FPW];
#pragma unroll
  for (int q = 0; q < C::FPW; ++q) wmma::fill_fragment(acc[q], 0.f);
  float amax = 0.f;
  int bad = 0;
  // products of parts (u, v) with order 2^-8(u+v) >= 2^-16: hh, hm, mh, hl, lh, mm
  constexpr int kPairs = 6;
  const int pu[kPairs] = {0, 0, 1, 0, 2, 1}, pv[kPairs] = {0, 1, 0, 2, 0, 1};
  const int npairs = split ? kPairs : 1;
  const bool tall = m.flags & kTall;
  TileRegs<R> regs;
  fetch_tile<R>(m, a, a.muon != 0, kbeg, regs);
  for (int64_t k0 = kbeg; k0 < kend; k0 += C::TK) {
    commit_tile<R>(regs, tall, 1.f, split, X3, amax, bad);
    __syncthreads();
    // the next tile's loads are in flight while the tensor cores work on this one
    if (k0 + C::TK < kend) fetch_tile<R>(m, a, a.muon != 0, k0 + C::TK, regs);
    for (int ks = kpart; ks < C::KSTEPS; ks += C::KSPLIT) {
#pragma unroll
      for (int q = 0; q < C::FPW; ++q) {
        const int f = fbase + q, fi = f / (R / 16), fj = f % (R / 16);
        // a fresh accumulator per k-step, added in IEEE fp32: short tensor-core accumulation chains
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> part;
        wmma::fill_fragment(part, 0.f);
#pragma unroll
        for (int pp = 0; pp < kPairs; ++pp) {
          if (pp >= npairs) break;
          wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> xa;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> xb;
          wmma::load_matrix_sync(xa, X3 + pu[pp] * P + fi * 16 * C::TKP + ks * 16, C::TKP);
          wmma::load_matrix_sync(xb, X3 + pv[pp] * P + fj * 16 * C::TKP + ks * 16, C::TKP);
          wmma::mma_sync(part, xa, xb, part);
        }
#pragma unroll
        for (int e = 0; e < part.num_elements; ++e) acc[q].x[e] += part.x[e];
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int q = 0; q < C::FPW; ++q) {
    const int f = fbase + q, fi = f / (R / 16), fj = f % (R / 16);
    wmma::store_matrix_sync(Red + kpart * R * R + fi * 16 * R + fj * 16, acc[q], R, wmma::mem_row_major);
  }
  if (bad) atomicOr(&s_bad, 1);
  atomicMax(&s_amax, __float_as_uint(amax));
  __syncthreads();
  const WsView w = ws_view<R>(m, a.ws);
  float* part = w.part + chunk * R * R;
  for (int e = threadIdx.x; e < R * R; e += kThreads) {
    float s = 0.f;
#pragma unroll
    for (int kp = 0; kp < C::KSPLIT; ++kp) s += Red[kp * R * R + e];
    part[e] = s;
  }
  if (threadIdx.x == 0) {
    w.stats[2 * chunk] = __uint_as_float(s_amax);
    w.stats[2 * chunk + 1] = s_bad ? 1.f : 0.f;
  }
#endif
}

// ---- 2. r x r phase -------------------------------------------------------------------------------
// C = A B (or A Bᵀ) for R x R matrices in shared memory with row stride R + 1 (float or double).
template <int R, class V>
__device__ __forceinline__ void smem_mm(const V* A, const V* B, V* Cm, bool transB) {
  constexpr int LD = R + 1;
  for (int e = threadIdx.x; e < R * R; e += kThreads) {
    const int i = e / R, j = e % R;
    V s = 0;
    if (transB) {
#pragma unroll 8
      for (int k = 0; k < R; ++k) s = fma(A[i * LD + k], B[j * LD + k], s);
    } else {
#pragma unroll 8
      for (int k = 0; k < R; ++k) s = fma(A[i * LD + k], B[k * LD + j], s);
    }
    Cm[i * LD + j] = s;
  }
  __syncthreads();
}

// Dynamic shared memory of ns_small_kernel: 5 fp32 R x (R+1) matrices, or 4 float64 ones on the
// float64 path (the larger: 133 KB at R = 64, within sm_80's and sm_90's opt-in limits).
constexpr size_t small_smem_bytes(int R) { return 4 * (size_t)R * (R + 1) * sizeof(double); }

// True when λ_min(G) >= tau · tr G (G fp32, r x r, row stride LD): a float64 Cholesky of
// G − tau tr(G) I in C (R x LD doubles), right-looking, one column per round. Same test as the CPU's
// gram_well_conditioned. Every thread returns the same value.
template <int R>
__device__ bool gram_well_conditioned(const float* G, double* C, int r, double tau) {
  constexpr int LD = R + 1;
  __shared__ double s_shift;
  __shared__ int s_ok;
  if (threadIdx.x == 0) {
    double tr = 0.0;
    for (int i = 0; i < r; ++i) tr += G[i * LD + i];
    s_shift = tau * tr;
    s_ok = 1;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < r * r; e += kThreads) {
    const int i = e / r, j = e % r;
    C[i * LD + j] = (double)G[i * LD + j] - (i == j ? s_shift : 0.0);
  }
  __syncthreads();
  for (int j = 0; j < r; ++j) {
    if (threadIdx.x == 0) {
      const double d = C[j * LD + j];
      if (!(d > 0.0)) s_ok = 0;
      else C[j * LD + j] = sqrt(d);
    }
    __syncthreads();
    if (!s_ok) break;  // uniform: read after the barrier
    const double dj = C[j * LD + j];
    for (int i = j + 1 + threadIdx.x; i < r; i += kThreads) C[i * LD + j] /= dj;
    __syncthreads();
    const int n = r - j - 1;
    for (int e = threadIdx.x; e < n * n; e += kThreads) {
      const int i = j + 1 + e / n, k = j + 1 + e % n;
      if (k <= i) C[i * LD + k] -= C[i * LD + j] * C[k * LD + j];
    }
    __syncthreads();
  }
  const bool ok = s_ok != 0;
  __syncthreads();  // s_ok is read by every thread before the next call may reset it
  return ok;
}

// The float64 path of one matrix: G = X Xᵀ from the stored values (Muon: the updated buffer), the
// r x r iteration and M'' = s M, all in float64, written to w.M64. sm holds 4 R x (R+1) doubles.
template <int R>
__device__ void small_float64(const NsMat& m, const NsLaunch& a, const WsView& w, double* sm) {
  constexpr int LD = R + 1, SQ = R * LD, TKD = 32;  // columns of X per tile (R x TKD fits in 2 SQ)
  constexpr int PPT = (R * R + kThreads - 1) / kThreads;
  double *G = sm, *M = G + SQ, *T = M + SQ, *A = T + SQ;
  double* Xs = T;  // tile of X, R x TKD, in T and A while G accumulates
  const int r = m.r;
  __shared__ double s_scale;
  double acc[PPT];
#pragma unroll
  for (int q = 0; q < PPT; ++q) acc[q] = 0.0;
  for (int64_t k0 = 0; k0 < m.d; k0 += TKD) {
    for (int e = threadIdx.x; e < R * TKD; e += kThreads) {
      const int i = e / TKD, kk = e % TKD;
      const int64_t k = k0 + kk;
      Xs[e] = (i < r && k < m.d) ? (double)x_at(m, a, i, k) : 0.0;
    }
    __syncthreads();
#pragma unroll
    for (int q = 0; q < PPT; ++q) {
      const int e = threadIdx.x + q * kThreads;
      if (e < R * R) {
        const int i = e / R, j = e % R;
        double s = 0.0;
#pragma unroll 8
        for (int kk = 0; kk < TKD; ++kk) s = fma(Xs[i * TKD + kk], Xs[j * TKD + kk], s);
        acc[q] += s;
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int q = 0; q < PPT; ++q) {
    const int e = threadIdx.x + q * kThreads;
    if (e < R * R) G[(e / R) * LD + e % R] = acc[q];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double tr = 0.0;
    for (int i = 0; i < r; ++i) tr += G[i * LD + i];
    const double norm = sqrt(tr);
    s_scale = 1.0 / (a.clamp_eps ? fmax(norm, (double)a.eps) : norm + (double)a.eps);
  }
  __syncthreads();
  const double scale = s_scale;
  for (int e = threadIdx.x; e < SQ; e += kThreads) {
    G[e] *= scale * scale;
    M[e] = (e / LD == e % LD && e / LD < r) ? 1.0 : 0.0;
  }
  __syncthreads();
  for (int st = 0; st < a.steps; ++st) {
    const double ca = a.coef[3 * st], cb = a.coef[3 * st + 1], cc = a.coef[3 * st + 2];
    if (st == 0) {
      for (int e = threadIdx.x; e < SQ; e += kThreads) A[e] = G[e];
      __syncthreads();
    } else {
      smem_mm<R>(M, G, T, false);  // T = M Ĝ
      smem_mm<R>(T, M, A, true);   // A = M Ĝ Mᵀ
    }
    smem_mm<R>(A, A, T, false);    // A²
    for (int e = threadIdx.x; e < SQ; e += kThreads) A[e] = cb * A[e] + cc * T[e];
    __syncthreads();
    smem_mm<R>(A, M, T, false);    // B M
    for (int e = threadIdx.x; e < SQ; e += kThreads) M[e] = ca * M[e] + T[e];
    __syncthreads();
  }
  for (int e = threadIdx.x; e < R * R; e += kThreads) {
    const int i = e / R, j = e % R;
    w.M64[e] = (i < r && j < r) ? scale * M[i * LD + j] : 0.0;
  }
}

template <int R>
__global__ void __launch_bounds__(kThreads) ns_small_kernel(NsLaunch a) {
  constexpr int LD = R + 1, SQ = R * LD;
  extern __shared__ __align__(16) float sm[];
  float *G = sm, *M = G + SQ, *T = M + SQ, *A = T + SQ, *A2 = A + SQ;
  __shared__ double s_tr;
  __shared__ float s_amax, s_t;
  __shared__ int s_bad;

  const NsMat m = a.table[blockIdx.x];
  const WsView w = ws_view<R>(m, a.ws);
  const int r = m.r;
  for (int e = threadIdx.x; e < R * R; e += kThreads) {
    float s = 0.f;
    for (int c = 0; c < m.nchunk; ++c) s += w.part[(int64_t)c * R * R + e];
    G[(e / R) * LD + e % R] = s;
  }
  if (threadIdx.x == 0) {
    float amax = 0.f;
    int bad = 0;
    for (int c = 0; c < m.nchunk; ++c) {
      amax = fmaxf(amax, w.stats[2 * c]);
      bad |= w.stats[2 * c + 1] != 0.f;
    }
    s_amax = amax;
    s_bad = bad;
    s_t = 1.f;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double tr = 0.0;
    for (int i = 0; i < r; ++i) tr += G[i * LD + i];
    s_tr = tr;
  }
  __syncthreads();
  if (s_bad || s_amax == 0.f) {
    // NaN/Inf input: NaN output (and status 1). Zero input: exact zeros.
    const float fill = s_bad ? __int_as_float(0x7fc00000) : 0.f;
    for (int e = threadIdx.x; e < R * R; e += kThreads) w.M[e] = fill;
    if (threadIdx.x == 0) {
      w.t[0] = 1.f;
      w.t[1] = 0.f;
      if (a.status) a.status[m.index] = s_bad ? 1 : 0;
    }
    return;
  }
  if (!(s_tr >= 1e-30 && s_tr <= 1e30)) {
    // fp32 squares over/underflowed: recompute G at scale t = 2^-e with t * max|x| in [0.5, 1)
    if (threadIdx.x == 0) {
      int ex = 0;
      frexpf(s_amax, &ex);
      s_t = ldexpf(1.f, -max(-125, min(125, ex)));  // t and t * max|x| stay normal floats
    }
    __syncthreads();
    const float t = s_t;
    for (int e = threadIdx.x; e < R * R; e += kThreads) {
      const int i = e / R, j = e % R;
      float s = 0.f;
      if (i < r && j < r && i <= j)
        for (int64_t k = 0; k < m.d; ++k) s = fmaf(t * x_at(m, a, i, k), t * x_at(m, a, j, k), s);
      G[i * LD + j] = s;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < R * R; e += kThreads) {
      const int i = e / R, j = e % R;
      if (i > j) G[i * LD + j] = G[j * LD + i];
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      double tr = 0.0;
      for (int i = 0; i < r; ++i) tr += G[i * LD + i];
      s_tr = tr;
    }
    __syncthreads();
  }
  const double t = s_t;
  const double norm = sqrt(s_tr) / t;
  const double scale = 1.0 / (a.clamp_eps ? fmax(norm, (double)a.eps) : norm + (double)a.eps);
  const float gfac = (float)((scale / t) * (scale / t));
  for (int e = threadIdx.x; e < R * LD; e += kThreads) {
    G[e] *= gfac;
    M[e] = (e / LD == e % LD && e / LD < r) ? 1.f : 0.f;
  }
  __syncthreads();
  if (a.steps > 0 && r > 1 &&
      !gram_well_conditioned<R>(G, reinterpret_cast<double*>(sm + 2 * SQ), r, ns::gram_min_eig(a.coef, a.steps))) {
    small_float64<R>(m, a, w, reinterpret_cast<double*>(sm));
    if (threadIdx.x == 0) {
      w.t[0] = 1.f;
      w.t[1] = 1.f;
      if (a.status) a.status[m.index] = 0;
    }
    return;
  }
  for (int st = 0; st < a.steps; ++st) {
    const float ca = a.coef[3 * st], cb = a.coef[3 * st + 1], cc = a.coef[3 * st + 2];
    if (st == 0) {
      for (int e = threadIdx.x; e < R * LD; e += kThreads) A[e] = G[e];
      __syncthreads();
    } else {
      smem_mm<R>(M, G, T, false);  // T = M Ĝ
      smem_mm<R>(T, M, A, true);   // A = M Ĝ Mᵀ
    }
    smem_mm<R>(A, A, A2, false);   // A²
    for (int e = threadIdx.x; e < R * LD; e += kThreads) T[e] = cb * A[e] + cc * A2[e];
    __syncthreads();
    smem_mm<R>(T, M, A2, false);   // B M
    for (int e = threadIdx.x; e < R * LD; e += kThreads) M[e] = ca * M[e] + A2[e];
    __syncthreads();
  }
  const float mfac = (float)(scale / t);
  for (int e = threadIdx.x; e < R * R; e += kThreads) {
    const int i = e / R, j = e % R;
    w.M[e] = (i < r && j < r) ? mfac * M[i * LD + j] : 0.f;
  }
  if (threadIdx.x == 0) {
    w.t[0] = s_t;
    w.t[1] = 0.f;
    if (a.status) a.status[m.index] = 0;
  }
}

// Apply on the float64 path: out = M'' X for this block's columns [kbeg, kend), float64 sums over
// the stored values of X, one output element per thread and round.
__device__ void apply_float64(const NsMat& m, const NsLaunch& a, const WsView& w, int R, int64_t kbeg, int64_t kend) {
  const bool tall = m.flags & kTall;
  const float lr = a.lr * m.lr_ratio;
  const int64_t n = (int64_t)m.r * (kend - kbeg);
  for (int64_t e = threadIdx.x; e < n; e += kThreads) {
    const int i = (int)(e / (kend - kbeg));
    const int64_t k = kbeg + e % (kend - kbeg);
    double s = 0.0;
    for (int j = 0; j < m.r; ++j) s = fma(w.M64[i * R + j], (double)x_at(m, a, j, k), s);
    const int64_t o = tall ? k * m.ld_dst + i : (int64_t)i * m.ld_dst + k;
    float v = (float)s;
    if (a.muon) v = ld1(m.dst, m.dtype, o) * a.decay - lr * v;
    st1(m.dst, m.dtype, o, v);
  }
}

// ---- 3. apply: out = M'' (t X) ------------------------------------------------------------------
template <int R>
__global__ void __launch_bounds__(kThreads) ns_apply_kernel(NsLaunch a) {
#if __CUDA_ARCH__ >= 800
  using C = Cfg<R>;
  constexpr int P = R * C::TKP, PM = R * C::MLD;
  static_assert(R * C::OLD * sizeof(float) <= 3 * P * sizeof(__nv_bfloat16), "output tile must fit the X tile");
  __shared__ __align__(128) __nv_bfloat16 X3[3 * P];  // reused as the fp32 output tile Os
  __shared__ __align__(128) __nv_bfloat16 M3[3 * PM];
  float* Os = reinterpret_cast<float*>(X3);

  const int mi = find_matrix(a.table, a.n_mats, blockIdx.x);
  const NsMat m = a.table[mi];
  const int64_t chunk = (int64_t)blockIdx.x - m.chunk_begin;
  const int64_t kbeg = chunk * C::CH;
  const int64_t kend = imin64(m.d, kbeg + C::CH);
  const WsView w = ws_view<R>(m, a.ws);
  if (w.t[1] != 0.f) {  // the float64 path (uniform over the block)
    apply_float64(m, a, w, R, kbeg, kend);
    return;
  }
  const float t = w.t[0];
  const bool split = a.muon || m.dtype != kBF16;
  const bool tall = m.flags & kTall;
  const float lr = a.lr * m.lr_ratio;
  for (int e = threadIdx.x; e < R * R; e += kThreads) {
    const int o = (e / R) * C::MLD + e % R;
    split3(w.M[e], M3[o], M3[PM + o], M3[2 * PM + o]);
  }
  const int warp = threadIdx.x / 32;
  float amax_unused = 0.f;
  int bad_unused = 0;
  // (M part, X part) products of order >= 2^-16; X exact in one part (bf16 input): the first 3
  constexpr int kPairs = 6;
  const int pm[kPairs] = {0, 1, 2, 0, 1, 0}, px[kPairs] = {0, 0, 0, 1, 1, 2};
  const int npairs = split ? kPairs : 3;
  TileRegs<R> regs;
  fetch_tile<R>(m, a, false, kbeg, regs);
  for (int64_t k0 = kbeg; k0 < kend; k0 += C::TK) {
    commit_tile<R>(regs, tall, t, split, X3, amax_unused, bad_unused);
    __syncthreads();
    if (k0 + C::TK < kend) fetch_tile<R>(m, a, false, k0 + C::TK, regs);
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[C::FOPW];
#pragma unroll
    for (int q = 0; q < C::FOPW; ++q) {
      const int f = warp * C::FOPW + q, fi = f / (C::TK / 16), fk = f % (C::TK / 16);
      wmma::fill_fragment(acc[q], 0.f);
#pragma unroll
      for (int js = 0; js < R / 16; ++js) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> part;
        wmma::fill_fragment(part, 0.f);
#pragma unroll
        for (int pp = 0; pp < kPairs; ++pp) {
          if (pp >= npairs) break;
          wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> ma;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> xb;
          wmma::load_matrix_sync(ma, M3 + pm[pp] * PM + fi * 16 * C::MLD + js * 16, C::MLD);
          wmma::load_matrix_sync(xb, X3 + px[pp] * P + js * 16 * C::TKP + fk * 16, C::TKP);
          wmma::mma_sync(part, ma, xb, part);
        }
#pragma unroll
        for (int e = 0; e < part.num_elements; ++e) acc[q].x[e] += part.x[e];
      }
    }
    __syncthreads();  // every warp is done reading X3 before Os overwrites it
#pragma unroll
    for (int q = 0; q < C::FOPW; ++q) {
      const int f = warp * C::FOPW + q, fi = f / (C::TK / 16), fk = f % (C::TK / 16);
      wmma::store_matrix_sync(Os + fi * 16 * C::OLD + fk * 16, acc[q], C::OLD, wmma::mem_row_major);
    }
    __syncthreads();
    // write the tile: groups of 8 along the destination's contiguous dimension
    constexpr int groups = R * C::TK / 8;
    for (int gidx = threadIdx.x; gidx < groups; gidx += kThreads) {
      float v[8];
      int64_t o;
      int n;
      if (!tall) {
        const int i0 = gidx / (C::TK / 8), kk0 = 8 * (gidx % (C::TK / 8));
        const int64_t k = k0 + kk0;
        n = (i0 < m.r && k < m.d) ? (int)imin64(8, m.d - k) : 0;
        o = (int64_t)i0 * m.ld_dst + k;
        const float4* src4 = reinterpret_cast<const float4*>(Os + i0 * C::OLD + kk0);
        const float4 lo4 = src4[0], hi4 = src4[1];
        v[0] = lo4.x; v[1] = lo4.y; v[2] = lo4.z; v[3] = lo4.w; v[4] = hi4.x; v[5] = hi4.y; v[6] = hi4.z; v[7] = hi4.w;
      } else {
        const int kk0 = gidx % C::TK, i0 = 8 * (gidx / C::TK);
        const int64_t k = k0 + kk0;
        n = (k < m.d && i0 < m.r) ? min(8, m.r - i0) : 0;
        o = k * m.ld_dst + i0;
#pragma unroll
        for (int q = 0; q < 8; ++q) v[q] = Os[(i0 + q) * C::OLD + kk0];
      }
      if (n == 0) continue;
      const bool vec = (m.flags & kVec) && n == 8;
      if (a.muon) {
        float p[8];
        if (vec) {
          ld8(m.dst, m.dtype, o, p);
        } else {
#pragma unroll
          for (int q = 0; q < 8; ++q) p[q] = q < n ? ld1(m.dst, m.dtype, o + q) : 0.f;
        }
#pragma unroll
        for (int q = 0; q < 8; ++q) v[q] = p[q] * a.decay - lr * v[q];
      }
      if (vec) {
        st8(m.dst, m.dtype, o, v);
      } else {
#pragma unroll
        for (int q = 0; q < 8; ++q)
          if (q < n) st1(m.dst, m.dtype, o + q, v[q]);
      }
    }
    __syncthreads();
  }
#endif
}

template <int R>
cudaError_t launch_bucket(const NsLaunch& args, cudaStream_t stream) {
  if (args.n_mats == 0) return cudaSuccess;
  ns_gram_kernel<R><<<(unsigned)args.n_chunks, kThreads, 0, stream>>>(args);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const size_t small_smem = small_smem_bytes(R);
  if (small_smem > 48 * 1024) {
    err = cudaFuncSetAttribute(ns_small_kernel<R>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)small_smem);
    if (err != cudaSuccess) return err;
  }
  ns_small_kernel<R><<<(unsigned)args.n_mats, kThreads, small_smem, stream>>>(args);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  ns_apply_kernel<R><<<(unsigned)args.n_chunks, kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace

cudaError_t ns_launch(int R, const NsLaunch& args, cudaStream_t stream) {
  switch (R) {
    case 16: return launch_bucket<16>(args, stream);
    case 32: return launch_bucket<32>(args, stream);
    case 64: return launch_bucket<64>(args, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace ns_cuda
}  // namespace evilbench
