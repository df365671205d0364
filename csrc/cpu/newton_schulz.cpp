// CPU implementations of evilbench::newton_schulz and evilbench::muon_update_.
//
// Gram form for r = min(rows, cols) <= 256 (maths: evilbench/kernels/newton_schulz_op.py): pass 1 packs tiles of X to fp32 (bf16 /
// fp16 converted on the fly, nothing materialised) and accumulates G = X Xᵀ with register-blocked
// FMA micro-kernels; the r x r iteration runs in fp32; pass 2 writes out = (sM) X tile by tile.
// Matrices whose Ĝ is too ill-conditioned for fp32 (near-square, ill-conditioned or rank-deficient
// inputs, see ../ns_common.h) are redone after the parallel phase in float64 with ATen.
// Matrices are spread over threads with at::parallel_for on a longest-processing-time partition,
// so one call over hundreds of mixed-size LoRA factors keeps every thread busy.
// The kernels exist twice: AVX2/FMA/F16C (selected at run time when the CPU has them) and portable.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "../ns_common.h"
#include "../ns_torch.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define EVILBENCH_X86 1
#endif

namespace evilbench {
namespace ns_cpu {

// ---- scalar conversions shared by both instruction sets ----
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);                                           // round to nearest even
  return (uint16_t)(u >> 16);
}
inline float f16_to_f32(uint16_t h) { return static_cast<float>(c10::Half(h, c10::Half::from_bits())); }
inline uint16_t f32_to_f16(float f) { return c10::Half(f).x; }

enum class Kind { Plain, Muon };

struct Job {
  Kind kind;
  at::ScalarType dtype;
  const void* x;  // Plain: input
  void* out;      // Plain: output
  void* p;        // Muon: parameter (updated in place)
  const void* g;  // Muon: gradient
  void* b;        // Muon: momentum buffer (updated in place)
  float lr;       // Muon: lr * adjust ratio
  int r;
  int64_t d, s_r, s_d, out_ld;
  bool tall;
  double cost;
};

struct Params {
  const double* coef;
  int steps;
  double eps;
  bool clamp_eps;
  float momentum, decay;
  bool nesterov;
};

}  // namespace ns_cpu
}  // namespace evilbench

// ================================ portable instantiation =========================================
namespace evilbench {
namespace ns_cpu {
namespace portable {
namespace {
struct VF {
  float v[8];
};
inline VF vzero() { VF r; for (int i = 0; i < 8; ++i) r.v[i] = 0.f; return r; }
inline VF vset1(float a) { VF r; for (int i = 0; i < 8; ++i) r.v[i] = a; return r; }
inline VF vload(const float* p) { VF r; for (int i = 0; i < 8; ++i) r.v[i] = p[i]; return r; }
inline void vstore(float* p, VF a) { for (int i = 0; i < 8; ++i) p[i] = a.v[i]; }
inline VF vbcast(const float* p) { return vset1(*p); }
inline VF vfma(VF a, VF b, VF c) { VF r; for (int i = 0; i < 8; ++i) r.v[i] = a.v[i] * b.v[i] + c.v[i]; return r; }
inline VF vadd(VF a, VF b) { VF r; for (int i = 0; i < 8; ++i) r.v[i] = a.v[i] + b.v[i]; return r; }
inline VF vsub(VF a, VF b) { VF r; for (int i = 0; i < 8; ++i) r.v[i] = a.v[i] - b.v[i]; return r; }
inline VF vmul(VF a, VF b) { VF r; for (int i = 0; i < 8; ++i) r.v[i] = a.v[i] * b.v[i]; return r; }
inline float vhsum(VF a) { float s = 0.f; for (int i = 0; i < 8; ++i) s += a.v[i]; return s; }
struct F32 {
  using raw = float;
  static inline float load1(const raw* p) { return *p; }
  static inline void store1(raw* p, float v) { *p = v; }
  static inline VF load8(const raw* p) { return vload(p); }
  static inline void store8(raw* p, VF v) { vstore(p, v); }
};
template <float (*TO)(uint16_t), uint16_t (*FROM)(float)>
struct H16 {
  using raw = uint16_t;
  static inline float load1(const raw* p) { return TO(*p); }
  static inline void store1(raw* p, float v) { *p = FROM(v); }
  static inline VF load8(const raw* p) { VF r; for (int i = 0; i < 8; ++i) r.v[i] = TO(p[i]); return r; }
  static inline void store8(raw* p, VF v) { for (int i = 0; i < 8; ++i) p[i] = FROM(v.v[i]); }
};
using BF16 = H16<bf16_to_f32, f32_to_bf16>;
using F16 = H16<f16_to_f32, f32_to_f16>;
#include "ns_kernels.inc"
}  // namespace
#include "ns_driver.inc"
}  // namespace portable
}  // namespace ns_cpu
}  // namespace evilbench

// ================================ AVX2 / FMA / F16C instantiation ================================
#ifdef EVILBENCH_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace evilbench {
namespace ns_cpu {
namespace avx2 {
namespace {
using VF = __m256;
inline VF vzero() { return _mm256_setzero_ps(); }
inline VF vset1(float a) { return _mm256_set1_ps(a); }
inline VF vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, VF a) { _mm256_storeu_ps(p, a); }
inline VF vbcast(const float* p) { return _mm256_broadcast_ss(p); }
inline VF vfma(VF a, VF b, VF c) { return _mm256_fmadd_ps(a, b, c); }
inline VF vadd(VF a, VF b) { return _mm256_add_ps(a, b); }
inline VF vsub(VF a, VF b) { return _mm256_sub_ps(a, b); }
inline VF vmul(VF a, VF b) { return _mm256_mul_ps(a, b); }
inline float vhsum(VF a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
struct F32 {
  using raw = float;
  static inline float load1(const raw* p) { return *p; }
  static inline void store1(raw* p, float v) { *p = v; }
  static inline VF load8(const raw* p) { return _mm256_loadu_ps(p); }
  static inline void store8(raw* p, VF v) { _mm256_storeu_ps(p, v); }
};
struct BF16 {
  using raw = uint16_t;
  static inline float load1(const raw* p) { return bf16_to_f32(*p); }
  static inline void store1(raw* p, float v) { *p = f32_to_bf16(v); }
  static inline VF load8(const raw* p) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  static inline void store8(raw* p, VF v) {
    __m256i u = _mm256_castps_si256(v);
    const __m256i abs = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
    const __m256i nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f800000));
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    __m256i quiet = _mm256_or_si256(u, _mm256_set1_epi32(0x400000));
    __m256i res = _mm256_srli_epi32(_mm256_blendv_epi8(rounded, quiet, nan), 16);
    __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(res), _mm256_extracti128_si256(res, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
  }
};
struct F16 {
  using raw = uint16_t;
  static inline float load1(const raw* p) { return _cvtsh_ss(*p); }
  static inline void store1(raw* p, float v) { *p = _cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT); }
  static inline VF load8(const raw* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static inline void store8(raw* p, VF v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
};
#include "ns_kernels.inc"
}  // namespace
#include "ns_driver.inc"
}  // namespace avx2
}  // namespace ns_cpu
}  // namespace evilbench
#pragma GCC pop_options
#endif

// ================================ dispatch and the ops ==========================================
namespace evilbench {
namespace ns_cpu {

static bool use_avx2() {
#ifdef EVILBENCH_X86
  const char* isa = std::getenv("EVILBENCH_CPU_ISA");  // "portable" forces the portable kernels (tests)
  if (isa && std::string(isa) == "portable") return false;
  static const bool have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                           __builtin_cpu_supports("f16c");
  return have;
#else
  return false;
#endif
}

static int run_job(const Job& j, const Params& prm, bool avx2_ok) {
#ifdef EVILBENCH_X86
  if (avx2_ok) return avx2::run(j, prm);
#endif
  return portable::run(j, prm);
}

// Longest-processing-time partition of jobs into `bins` lists.
static std::vector<std::vector<int64_t>> partition(const std::vector<Job>& jobs, int bins) {
  std::vector<int64_t> order(jobs.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return jobs[a].cost > jobs[b].cost; });
  std::vector<std::vector<int64_t>> out(bins);
  std::vector<double> load(bins, 0.0);
  for (int64_t i : order) {
    int k = (int)(std::min_element(load.begin(), load.end()) - load.begin());
    out[k].push_back(i);
    load[k] += jobs[i].cost;
  }
  return out;
}

static void run_jobs(const std::vector<Job>& jobs, const Params& prm, int* status) {
  if (jobs.empty()) return;
  const int bins = (int)std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (int64_t)jobs.size()));
  auto parts = partition(jobs, bins);
  const bool avx2_ok = use_avx2();
  at::parallel_for(0, bins, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t i : parts[b]) status[i] = run_job(jobs[i], prm, avx2_ok);
  });
}

static double job_cost(int r, int64_t d, int steps) {
  const double rp = (double)((r + 7) / 8 * 8);
  return rp * (double)d * 3.0 + steps * 4.0 * rp * rp * rp / 8.0;
}

static void check_float_dtype(const at::Tensor& t, const char* what, size_t i) {
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf,
                    what, "[", i, "] has dtype ", t.scalar_type(), "; supported: float32, bfloat16, float16");
}

static std::vector<std::array<double, 3>> unpack_coefficients(at::ArrayRef<double> coefficients) {
  TORCH_CHECK_VALUE(coefficients.size() % 3 == 0, "coefficients must hold 3 values per step, got ",
                    coefficients.size());
  std::vector<std::array<double, 3>> out;
  for (size_t i = 0; i < coefficients.size(); i += 3) out.push_back({coefficients[i], coefficients[i + 1], coefficients[i + 2]});
  return out;
}

// Classic iteration in fp32 with ATen (r > kGramMaxRank). Returns X_k in X's orientation (r x d).
static at::Tensor classic(const at::Tensor& x_in, at::ArrayRef<double> coef, double eps, bool clamp_eps, bool* bad) {
  at::Tensor x = x_in.to(at::kFloat);
  const double norm = at::linalg_vector_norm(x, 2, c10::nullopt, false, at::kDouble).item<double>();
  if (!std::isfinite(norm)) {
    *bad = true;
    return at::full_like(x, std::numeric_limits<float>::quiet_NaN());
  }
  x = x * (1.0 / (clamp_eps ? std::max(norm, eps) : norm + eps));
  for (size_t s = 0; s + 2 < coef.size(); s += 3) {
    at::Tensor a = at::mm(x, x.t());
    at::Tensor bm = at::addmm(a, a, a, coef[s + 1], coef[s + 2]);
    x = at::addmm(x, bm, x, coef[s], 1.0);
  }
  return x;
}

constexpr int kGramMaxRank = 256;
constexpr int kNeedsFloat64 = 3;  // ns_one: Ĝ too ill-conditioned for the fp32 kernels

std::tuple<std::vector<at::Tensor>, at::Tensor> newton_schulz_cpu(at::TensorList mats, at::ArrayRef<double> coefficients,
                                                                   double eps, bool clamp_eps) {
  unpack_coefficients(coefficients);
  const int steps = (int)(coefficients.size() / 3);
  const int64_t n = (int64_t)mats.size();
  std::vector<at::Tensor> outs(n), keep(n);
  at::Tensor status = at::zeros({n}, at::TensorOptions().dtype(at::kInt));
  int* st = status.data_ptr<int>();
  std::vector<Job> jobs;
  std::vector<int64_t> job_index;
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& m = mats[i];
    TORCH_CHECK_VALUE(m.dim() == 2, "mats[", i, "] must be 2-D, got ", m.sizes());
    TORCH_CHECK_VALUE(m.device().is_cpu(), "mats[", i, "] is on ", m.device(), "; this is the CPU kernel");
    check_float_dtype(m, "mats", i);
    const int64_t R = m.size(0), C = m.size(1);
    at::Tensor x = m;
    bool colmajor = false;
    if (x.stride(1) == 1 && x.stride(0) >= std::max<int64_t>(C, 1)) {
    } else if (x.stride(0) == 1 && x.stride(1) >= std::max<int64_t>(R, 1)) {
      colmajor = true;
    } else {
      x = x.contiguous();
    }
    at::Tensor out = colmajor ? at::empty({C, R}, x.options()).t() : at::empty({R, C}, x.options());
    outs[i] = out;
    if (R == 0 || C == 0) continue;
    const bool tall = R > C;
    const int64_t r = tall ? C : R, d = tall ? R : C;
    if (r > kGramMaxRank) {
      bool bad = false;
      at::Tensor y = classic(tall ? x.t() : x, coefficients, eps, clamp_eps, &bad);
      out.copy_(tall ? y.t() : y);
      st[i] = bad ? 1 : 0;
      continue;
    }
    keep[i] = x;
    Job j{};
    j.kind = Kind::Plain;
    j.dtype = x.scalar_type();
    j.x = x.data_ptr();
    j.out = out.data_ptr();
    j.r = (int)r;
    j.d = d;
    // X(i, k) = in(i, k) (wide) or in(k, i) (tall)
    j.s_r = tall ? x.stride(1) : x.stride(0);
    j.s_d = tall ? x.stride(0) : x.stride(1);
    j.tall = j.s_d != 1;  // then s_r == 1: the kernels read X column by column
    const int64_t o_r = tall ? out.stride(1) : out.stride(0), o_d = tall ? out.stride(0) : out.stride(1);
    j.out_ld = j.tall ? o_d : o_r;
    TORCH_INTERNAL_ASSERT(j.tall ? (j.s_r == 1 && o_r == 1) : (j.s_d == 1 && o_d == 1));
    j.cost = job_cost(j.r, d, steps);
    jobs.push_back(j);
    job_index.push_back(i);
  }
  Params prm{coefficients.data(), steps, eps, clamp_eps, 0.f, 1.f, false};
  std::vector<int> job_status(jobs.size(), 0);
  run_jobs(jobs, prm, job_status.data());
  for (size_t k = 0; k < jobs.size(); ++k) {
    const int64_t i = job_index[k];
    if (job_status[k] == kNeedsFloat64) {
      const bool tall = mats[i].size(0) > mats[i].size(1);
      at::Tensor y = ns::gram_float64(tall ? keep[i].t() : keep[i], coefficients, eps, clamp_eps).first;
      outs[i].copy_(tall ? y.t() : y);
      job_status[k] = 0;
    }
    st[i] = job_status[k];
  }
  return {outs, status};
}

void muon_update_cpu(at::TensorList params, at::TensorList grads, at::TensorList bufs, double lr,
                     at::ArrayRef<double> lr_ratios, double weight_decay, double momentum, bool nesterov,
                     at::ArrayRef<double> coefficients, double eps) {
  unpack_coefficients(coefficients);
  const int steps = (int)(coefficients.size() / 3);
  const size_t n = params.size();
  TORCH_CHECK_VALUE(grads.size() == n && bufs.size() == n && lr_ratios.size() == n,
                    "muon_update_: params, grads, momentum buffers and lr_ratios must have equal lengths, got ", n, ", ",
                    grads.size(), ", ", bufs.size(), ", ", lr_ratios.size());
  const double decay = 1.0 - lr * weight_decay;
  std::vector<Job> jobs;
  std::vector<size_t> job_index;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor &p = params[i], &g = grads[i], &b = bufs[i];
    TORCH_CHECK_VALUE(p.dim() == 2, "params[", i, "] must be 2-D, got ", p.sizes());
    TORCH_CHECK_VALUE(g.sizes() == p.sizes() && b.sizes() == p.sizes(), "params[", i, "], its gradient and momentum buffer differ in shape: ",
                      p.sizes(), ", ", g.sizes(), ", ", b.sizes());
    TORCH_CHECK_VALUE(g.scalar_type() == p.scalar_type() && b.scalar_type() == p.scalar_type(),
                      "params[", i, "], its gradient and momentum buffer must share a dtype");
    TORCH_CHECK_VALUE(p.is_contiguous() && g.is_contiguous() && b.is_contiguous(),
                      "params[", i, "], its gradient and momentum buffer must be contiguous");
    TORCH_CHECK_VALUE(p.device().is_cpu() && g.device().is_cpu() && b.device().is_cpu(), "params[", i, "] is not on the CPU");
    check_float_dtype(p, "params", i);
    const int64_t R = p.size(0), C = p.size(1);
    if (R == 0 || C == 0) continue;
    const bool tall = R > C;
    const int64_t r = tall ? C : R, d = tall ? R : C;
    const double lr_i = lr * lr_ratios[i];
    if (r > kGramMaxRank) {
      at::Tensor bb = b;
      bb.lerp_(g, 1.0 - momentum);
      at::Tensor u = nesterov ? g.lerp(bb, momentum) : bb;
      bool bad = false;
      at::Tensor y = classic(tall ? u.t() : u, coefficients, eps, true, &bad);
      at::Tensor pp = p;
      pp.mul_(decay).add_(tall ? y.t() : y, -lr_i);
      continue;
    }
    Job j{};
    j.kind = Kind::Muon;
    j.dtype = p.scalar_type();
    j.p = p.data_ptr();
    j.g = g.data_ptr();
    j.b = b.data_ptr();
    j.lr = (float)lr_i;
    j.r = (int)r;
    j.d = d;
    j.tall = tall;
    j.s_r = tall ? 1 : C;
    j.s_d = tall ? C : 1;
    j.out_ld = C;
    j.cost = job_cost(j.r, d, steps);
    jobs.push_back(j);
    job_index.push_back(i);
  }
  Params prm{coefficients.data(), steps, eps, true, (float)momentum, (float)decay, nesterov};
  std::vector<int> job_status(jobs.size(), 0);
  run_jobs(jobs, prm, job_status.data());  // NaN/Inf propagate into the parameters, as in torch.optim.Muon
  for (size_t k = 0; k < jobs.size(); ++k) {
    if (job_status[k] != kNeedsFloat64) continue;
    // the kernel has updated the momentum buffer (pass 1); U from the stored values as the kernels
    // form it: fma(m, b - g, g) rounded once to fp32 (ill-conditioned inputs are sensitive to it)
    const size_t i = job_index[k];
    const at::Tensor &p = params[i], g = grads[i].to(at::kFloat), b = bufs[i].to(at::kFloat);
    at::Tensor u = nesterov ? (g.to(at::kDouble) + (double)(float)momentum * (b - g).to(at::kDouble)).to(at::kFloat) : b;
    const bool tall = p.size(0) > p.size(1);
    at::Tensor y = ns::gram_float64(tall ? u.t() : u, coefficients, eps, true).first.to(at::kFloat);
    at::Tensor pf = p.to(at::kFloat) * (float)decay - jobs[k].lr * (tall ? y.t() : y);
    at::Tensor pp = p;
    pp.copy_(pf);
  }
}

}  // namespace ns_cpu
}  // namespace evilbench

TORCH_LIBRARY_IMPL(evilbench, CPU, m) {
  m.impl("newton_schulz", &evilbench::ns_cpu::newton_schulz_cpu);
  m.impl("muon_update_", &evilbench::ns_cpu::muon_update_cpu);
}
