// CPU kernels of the fused spectral penalty (maths: evilbench/kernels/spectral.py):
//   pass 1: Grams P = BᵀB, Q = AAᵀ of every pair (one read of A and B, float32 runs summed in float64)
//   r × r:  Cholesky / eigen route, eigen-decomposition of K = RᵀQR, penalty value and the gradient
//           factors FB = NQ, FA = PN (float64)
//   pass 2: gB = g·B FB, gA = g·FA A (one read of A and B, one write of the gradients)
// Work is spread over threads by (pair, side) items, largest first, taken from a shared counter.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "../spectral_common.h"
#include "../spectral_torch.h"

namespace evilbench {
namespace spectral {
namespace cpu {

// Panel sizes (L1-resident tiles): Gram panels are float64 (≈ 16 KiB of B rows, ≈ 32 KiB of A
// columns), apply panels float32 (≈ 16 KiB, ≈ 32 KiB).
static inline int64_t gram_rows_per_panel(int rp4) { return std::max<int64_t>(16, 2048 / rp4); }
static inline int64_t gram_cols_per_panel(int r) { return std::max<int64_t>(32, 4096 / r) / 4 * 4; }
static inline int64_t apply_rows_per_panel(int rp8) { return std::max<int64_t>(16, 4096 / rp8); }
static inline int64_t apply_cols_per_panel(int r) { return std::max<int64_t>(64, 8192 / r) / 16 * 16; }

}  // namespace cpu
}  // namespace spectral
}  // namespace evilbench

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EB_HAVE_AVX2_PATH 1
#include <immintrin.h>
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace evilbench {
namespace spectral {
namespace cpu {
#define EB_SIMD_NS avx2
#define EB_SIMD_AVX2 1
#include "spectral_kernels.h"
#undef EB_SIMD_AVX2
#undef EB_SIMD_NS
}  // namespace cpu
}  // namespace spectral
}  // namespace evilbench
#pragma GCC pop_options
#endif

namespace evilbench {
namespace spectral {
namespace cpu {
#define EB_SIMD_NS generic
#include "spectral_kernels.h"
#undef EB_SIMD_NS

static bool use_avx2() {
#ifdef EB_HAVE_AVX2_PATH
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

bool simd_avx2() { return use_avx2(); }

// ---- float64 inputs (gradcheck, references): plain loops ------------------------------------

static void gram_rows_f64(const double* B, int64_t m, int r, double* P) {
  std::fill(P, P + r * r, 0.0);
  for (int64_t k = 0; k < m; ++k) {
    const double* b = B + k * r;
    for (int i = 0; i < r; ++i)
      for (int j = i; j < r; ++j) P[i * r + j] += b[i] * b[j];
  }
}

static void gram_cols_f64(const double* A, int r, int64_t n, double* Q) {
  for (int i = 0; i < r; ++i)
    for (int j = i; j < r; ++j) {
      double s = 0.0;
      const double* a = A + i * n;
      const double* b = A + j * n;
      for (int64_t k = 0; k < n; ++k) s += a[k] * b[k];
      Q[i * r + j] = s;
    }
}

static void apply_rows_f64(const double* B, int64_t m, int r, const double* F, double g, double* out) {
  for (int64_t k = 0; k < m; ++k)
    for (int j = 0; j < r; ++j) {
      double s = 0.0;
      for (int i = 0; i < r; ++i) s += B[k * r + i] * F[i * r + j];
      out[k * r + j] = g * s;
    }
}

static void apply_cols_f64(const double* A, int r, int64_t n, const double* F, double g, double* out) {
  for (int i = 0; i < r; ++i) {
    double* o = out + i * n;
    std::fill(o, o + n, 0.0);
    for (int j = 0; j < r; ++j) {
      const double f = g * F[i * r + j];
      const double* a = A + j * n;
      for (int64_t k = 0; k < n; ++k) o[k] += f * a[k];
    }
  }
}

// ---- input checks and work items -------------------------------------------------------------

static void check_pairs(const at::TensorList& A, const at::TensorList& B, const char* who) {
  check_pairs_with(A, B, who, [&](size_t i) {
    for (const at::Tensor* t : {&A[i], &B[i]}) {
      TORCH_CHECK(t->device().is_cpu(), who, ": pair ", i, ": expected CPU tensors");
      const auto st = t->scalar_type();
      TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf, who, ": pair ", i,
                  ": unsupported dtype ", st);
    }
  });
}

struct Item {
  int pair;
  int side;  // 0: B (m × r, rows), 1: A (r × n, columns)
  int64_t cost;
};

static std::vector<Item> make_items(const at::TensorList& A, const at::TensorList& B) {
  std::vector<Item> items;
  items.reserve(2 * A.size());
  for (size_t i = 0; i < A.size(); ++i) {
    items.push_back({static_cast<int>(i), 0, B[i].numel()});
    items.push_back({static_cast<int>(i), 1, A[i].numel()});
  }
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.cost > b.cost; });
  return items;
}

struct Scratch {
  std::vector<float> panel, out, F;
  std::vector<double> dpanel, G;
  explicit Scratch(int rmax) {
    const int rp = (rmax + 7) / 8 * 8;
    int64_t nf = 0, nd = 0;
    for (int r = 1; r <= rmax; ++r) {
      const int rp8 = (r + 7) / 8 * 8, rp4 = (r + 3) / 4 * 4;
      nf = std::max<int64_t>(nf, apply_rows_per_panel(rp8) * rp8);
      nf = std::max<int64_t>(nf, static_cast<int64_t>(r) * (apply_cols_per_panel(r) + 16));
      nd = std::max<int64_t>(nd, gram_rows_per_panel(rp4) * rp4);
      nd = std::max<int64_t>(nd, static_cast<int64_t>(r) * (gram_cols_per_panel(r) + 4));
    }
    panel.resize(nf);
    out.resize(nf);
    dpanel.resize(nd);
    F.resize(static_cast<size_t>(rp) * rp);
    G.resize(static_cast<size_t>(rp) * rp);
  }
};

// Runs fn(item, scratch) over all items on all threads, dynamically (largest items first).
template <typename Fn>
static void run_items(const std::vector<Item>& items, int rmax, Fn&& fn) {
  std::atomic<int64_t> next{0};
  const int64_t n = static_cast<int64_t>(items.size());
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n));
  at::parallel_for(0, nt, 1, [&](int64_t, int64_t) {
    Scratch s(rmax);
    for (int64_t i = next++; i < n; i = next++) fn(items[i], s);
  });
}

template <typename Fn>
static void run_pairs(int64_t n, Fn&& fn) {
  std::atomic<int64_t> next{0};
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n));
  at::parallel_for(0, nt, 1, [&](int64_t, int64_t) {
    for (int64_t i = next++; i < n; i = next++) fn(i);
  });
}

template <typename T>
static void gram_item_typed(const T* X, int side, int64_t rows_or_cols, int r, double* G, Scratch& s) {
  if (use_avx2()) {
#ifdef EB_HAVE_AVX2_PATH
    if (side == 0) avx2::gram_of_rows(X, rows_or_cols, r, G, s.dpanel.data(), s.G.data());
    else avx2::gram_of_cols(X, r, rows_or_cols, G, s.dpanel.data());
    return;
#endif
  }
  if (side == 0) generic::gram_of_rows(X, rows_or_cols, r, G, s.dpanel.data(), s.G.data());
  else generic::gram_of_cols(X, r, rows_or_cols, G, s.dpanel.data());
}

// Upper triangle of the Gram of one side of a pair into G (r × r); the caller symmetrises.
static void gram_item(const at::Tensor& X, int side, int r, double* G, Scratch& s) {
  const int64_t len = side == 0 ? X.size(0) : X.size(1);
  switch (X.scalar_type()) {
    case at::kDouble:
      if (side == 0) gram_rows_f64(X.data_ptr<double>(), len, r, G);
      else gram_cols_f64(X.data_ptr<double>(), r, len, G);
      break;
    case at::kFloat: gram_item_typed(X.data_ptr<float>(), side, len, r, G, s); break;
    case at::kBFloat16: gram_item_typed(X.data_ptr<at::BFloat16>(), side, len, r, G, s); break;
    case at::kHalf: gram_item_typed(X.data_ptr<at::Half>(), side, len, r, G, s); break;
    default: TORCH_CHECK(false, "spectral: unsupported dtype");
  }
}

template <typename T>
static void apply_item_typed(const T* X, int side, int64_t len, int r, const float* Fp, T* out, Scratch& s) {
  if (use_avx2()) {
#ifdef EB_HAVE_AVX2_PATH
    if (side == 0) avx2::apply_to_rows(X, len, r, Fp, out, s.panel.data(), s.out.data());
    else avx2::apply_to_cols(X, r, len, Fp, out, s.panel.data(), s.out.data());
    return;
#endif
  }
  if (side == 0) generic::apply_to_rows(X, len, r, Fp, out, s.panel.data(), s.out.data());
  else generic::apply_to_cols(X, r, len, Fp, out, s.panel.data(), s.out.data());
}

// out = g · X F (side 0, X = B) or g · F X (side 1, X = A), F r × r float64.
static void apply_item(const at::Tensor& X, int side, int r, const double* F, double g, at::Tensor& out, Scratch& s) {
  const int64_t len = side == 0 ? X.size(0) : X.size(1);
  if (X.scalar_type() == at::kDouble) {
    if (side == 0) apply_rows_f64(X.data_ptr<double>(), len, r, F, g, out.data_ptr<double>());
    else apply_cols_f64(X.data_ptr<double>(), r, len, F, g, out.data_ptr<double>());
    return;
  }
  const int rp = (r + 7) / 8 * 8;
  float* Fp = s.F.data();
  std::fill(Fp, Fp + rp * rp, 0.f);
  for (int i = 0; i < r; ++i)
    for (int j = 0; j < r; ++j) Fp[i * rp + j] = static_cast<float>(g * F[i * r + j]);
  switch (X.scalar_type()) {
    case at::kFloat: apply_item_typed(X.data_ptr<float>(), side, len, r, Fp, out.data_ptr<float>(), s); break;
    case at::kBFloat16:
      apply_item_typed(X.data_ptr<at::BFloat16>(), side, len, r, Fp, out.data_ptr<at::BFloat16>(), s);
      break;
    case at::kHalf: apply_item_typed(X.data_ptr<at::Half>(), side, len, r, Fp, out.data_ptr<at::Half>(), s); break;
    default: TORCH_CHECK(false, "spectral: unsupported dtype");
  }
}

// ---- r × r phase (float64) -----------------------------------------------------------------

// Z = X Y (r × r, row-major; i-k-j order so the inner loop vectorises).
static void mm(int r, const double* X, const double* Y, double* Z) {
  for (int i = 0; i < r; ++i) {
    double* z = Z + i * r;
    for (int j = 0; j < r; ++j) z[j] = 0.0;
    for (int k = 0; k < r; ++k) {
      const double x = X[i * r + k];
      const double* y = Y + k * r;
      for (int j = 0; j < r; ++j) z[j] += x * y[j];
    }
  }
}

static void transpose(int r, const double* X, double* Xt) {
  for (int i = 0; i < r; ++i)
    for (int j = 0; j < r; ++j) Xt[j * r + i] = X[i * r + j];
}

// Symmetric eigen-decomposition of M (r × r): eigenvalues ascending into lam, eigenvectors as the
// ROWS of Vt (Vt[t·r + i] = component i of eigenvector t). Householder tridiagonalisation + implicit
// QL with shifts (the EISPACK tred2/tql2 pair, after the public-domain JAMA transcription); rows
// instead of columns for the eigenvectors so the rotations vectorise. buf: ≥ r² + 2r doubles.
static void sym_eigh(int n, const double* M, double* lam, double* Vt, double* buf) {
  double* V = buf;  // row-major, V[i][j] = V[i * n + j]
  double* d = lam;
  double* e = buf + n * n;
  double mscale = 0.0;  // work on M / max|M_ii| (entries O(1), so plain sqrt replaces hypot)
  for (int i = 0; i < n; ++i) mscale = std::max(mscale, std::fabs(M[i * n + i]));
  if (!(mscale > 0.0)) mscale = 1.0;
  const double inv = 1.0 / mscale;
  for (int i = 0; i < n * n; ++i) V[i] = M[i] * inv;
#define EB_V(i, j) V[(i) * n + (j)]
  for (int j = 0; j < n; ++j) d[j] = EB_V(n - 1, j);
  for (int i = n - 1; i > 0; --i) {
    double scale = 0.0, h = 0.0;
    for (int k = 0; k < i; ++k) scale += std::fabs(d[k]);
    if (scale == 0.0) {
      e[i] = d[i - 1];
      for (int j = 0; j < i; ++j) {
        d[j] = EB_V(i - 1, j);
        EB_V(i, j) = 0.0;
        EB_V(j, i) = 0.0;
      }
    } else {
      for (int k = 0; k < i; ++k) {
        d[k] /= scale;
        h += d[k] * d[k];
      }
      double f = d[i - 1];
      double g = std::sqrt(h);
      if (f > 0) g = -g;
      e[i] = scale * g;
      h -= f * g;
      d[i - 1] = f - g;
      for (int j = 0; j < i; ++j) e[j] = 0.0;
      for (int j = 0; j < i; ++j) {
        f = d[j];
        EB_V(j, i) = f;
        g = e[j] + EB_V(j, j) * f;
        for (int k = j + 1; k <= i - 1; ++k) {
          g += EB_V(k, j) * d[k];
          e[k] += EB_V(k, j) * f;
        }
        e[j] = g;
      }
      f = 0.0;
      for (int j = 0; j < i; ++j) {
        e[j] /= h;
        f += e[j] * d[j];
      }
      const double hh = f / (h + h);
      for (int j = 0; j < i; ++j) e[j] -= hh * d[j];
      for (int j = 0; j < i; ++j) {
        f = d[j];
        g = e[j];
        for (int k = j; k <= i - 1; ++k) EB_V(k, j) -= (f * e[k] + g * d[k]);
        d[j] = EB_V(i - 1, j);
        EB_V(i, j) = 0.0;
      }
    }
    d[i] = h;
  }
  for (int i = 0; i < n - 1; ++i) {
    EB_V(n - 1, i) = EB_V(i, i);
    EB_V(i, i) = 1.0;
    const double h = d[i + 1];
    if (h != 0.0) {
      for (int k = 0; k <= i; ++k) d[k] = EB_V(k, i + 1) / h;
      for (int j = 0; j <= i; ++j) {
        double g = 0.0;
        for (int k = 0; k <= i; ++k) g += EB_V(k, i + 1) * EB_V(k, j);
        for (int k = 0; k <= i; ++k) EB_V(k, j) -= g * d[k];
      }
    }
    for (int k = 0; k <= i; ++k) EB_V(k, i + 1) = 0.0;
  }
  for (int j = 0; j < n; ++j) {
    d[j] = EB_V(n - 1, j);
    EB_V(n - 1, j) = 0.0;
  }
  EB_V(n - 1, n - 1) = 1.0;
  e[0] = 0.0;
#undef EB_V
  transpose(n, V, Vt);  // QL rotations act on rows of Vt
  for (int i = 1; i < n; ++i) e[i - 1] = e[i];
  e[n - 1] = 0.0;
  double f = 0.0, tst1 = 0.0;
  const double eps = std::ldexp(1.0, -52);
  for (int l = 0; l < n; ++l) {
    tst1 = std::max(tst1, std::fabs(d[l]) + std::fabs(e[l]));
    int m = l;
    while (m < n) {
      if (std::fabs(e[m]) <= eps * tst1) break;
      ++m;
    }
    if (m > l) {
      int iter = 0;
      do {
        ++iter;
        double g = d[l];
        double p = (d[l + 1] - g) / (2.0 * e[l]);
        double r = std::sqrt(p * p + 1.0);  // the input is scaled to trace 1: no overflow
        if (p < 0) r = -r;
        d[l] = e[l] / (p + r);
        d[l + 1] = e[l] * (p + r);
        const double dl1 = d[l + 1];
        double h = g - d[l];
        for (int i = l + 2; i < n; ++i) d[i] -= h;
        f += h;
        p = d[m];
        double c = 1.0, c2 = c, c3 = c;
        const double el1 = e[l + 1];
        double s = 0.0, s2 = 0.0;
        for (int i = m - 1; i >= l; --i) {
          c3 = c2;
          c2 = c;
          s2 = s;
          g = c * e[i];
          h = c * p;
          r = std::sqrt(p * p + e[i] * e[i]);
          e[i + 1] = s * r;
          s = e[i] / r;
          c = p / r;
          p = c * d[i] - s * g;
          d[i + 1] = h + s * (c * g + s * d[i]);
          double* vi = Vt + i * n;
          double* vi1 = vi + n;
          for (int k = 0; k < n; ++k) {
            const double hk = vi1[k];
            vi1[k] = s * vi[k] + c * hk;
            vi[k] = c * vi[k] - s * hk;
          }
        }
        p = -s * s2 * c3 * el1 * e[l] / dl1;
        e[l] = s * p;
        d[l] = c * p;
      } while (std::fabs(e[l]) > eps * tst1 && iter < 100);
    }
    d[l] += f;
    e[l] = 0.0;
  }
  for (int i = 0; i < n; ++i) d[i] *= mscale;
  for (int i = 0; i < n - 1; ++i) {  // ascending order
    int k = i;
    double p = d[i];
    for (int j = i + 1; j < n; ++j)
      if (d[j] < p) {
        k = j;
        p = d[j];
      }
    if (k != i) {
      d[k] = d[i];
      d[i] = p;
      std::swap_ranges(Vt + i * n, Vt + (i + 1) * n, Vt + k * n);
    }
  }
}

// One pair: P, Q full symmetric r × r. Writes value, optionally σ (descending) and FB, FA.
void rxr_pair(int kind, int r, const double* P, const double* Q, bool need, double* value, double* sigma_out,
              double* FB, double* FA) {
  const size_t rr = static_cast<size_t>(r) * r;
  double trP = 0.0, trQ = 0.0;
  for (int i = 0; i < r; ++i) {
    trP += P[i * r + i];
    trQ += Q[i * r + i];
  }
  auto finish_const = [&](double v, double sig) {
    *value = v;
    if (sigma_out) std::fill(sigma_out, sigma_out + r, sig);
    if (need) {
      std::fill(FB, FB + rr, 0.0);
      std::fill(FA, FA + rr, 0.0);
    }
  };
  if (!std::isfinite(trP) || !std::isfinite(trQ)) return finish_const(std::nan(""), std::nan(""));
  if (trP <= kMinGram || trQ <= kMinGram) return finish_const(0.0, 0.0);

  std::vector<double> buf(9 * rr + 6 * r);
  double* N = buf.data();
  double* R = N + rr;   // P = R Rᵀ
  double* T = R + rr;   // R⁺ᵀ
  double* K = T + rr;
  double* Vt = K + rr;  // eigenvectors of K as rows, descending order
  double* W = Vt + rr;
  double* X = W + rr;
  double* Y = X + rr;   // eigen scratch (r² + 2r)
  double* lam = Y + rr + 2 * r;
  double* sig = lam + r;
  double* gos = sig + r;
  double* s = gos + r;

  if (kind == kParticipation) {
    if (r == 1) return finish_const(0.0, 0.0);
    mm(r, P, Q, W);  // M = P Q
    double s2 = 0.0, s4 = 0.0;
    for (int i = 0; i < r; ++i) {
      s2 += W[i * r + i];
      for (int j = 0; j < r; ++j) s4 += W[i * r + j] * W[j * r + i];
    }
    *value = 1.0 - s2 * s2 / (r * s4);
    if (need) {
      const double c1 = -4.0 * s2 / (r * s4), c3 = 4.0 * s2 * s2 / (r * s4 * s4);
      mm(r, Q, P, X);
      for (size_t t = 0; t < rr; ++t) N[t] = c3 * X[t];
      for (int i = 0; i < r; ++i) N[i * r + i] += c1;
      mm(r, N, Q, FB);
      mm(r, P, N, FA);
    }
    return;
  }

  // P = R Rᵀ: Cholesky when safely positive definite (R lower triangular)
  std::fill(R, R + rr, 0.0);
  double maxdiag = 0.0;
  for (int i = 0; i < r; ++i) maxdiag = std::max(maxdiag, P[i * r + i]);
  bool ok = true;
  double minpiv2 = std::numeric_limits<double>::infinity();
  for (int j = 0; j < r && ok; ++j) {
    double d = P[j * r + j];
    for (int k = 0; k < j; ++k) d -= R[j * r + k] * R[j * r + k];
    if (!(d > 0.0)) {
      ok = false;
      break;
    }
    minpiv2 = std::min(minpiv2, d);
    const double l = std::sqrt(d);
    R[j * r + j] = l;
    for (int i = j + 1; i < r; ++i) {
      double v = P[i * r + j];
      for (int k = 0; k < j; ++k) v -= R[i * r + k] * R[j * r + k];
      R[i * r + j] = v / l;
    }
  }
  ok = ok && minpiv2 > kCholTol * maxdiag;
  if (ok) {
    // W = L⁻¹ (lower triangular, column by column), T = Wᵀ = L⁻ᵀ
    std::fill(W, W + rr, 0.0);
    for (int j = 0; j < r; ++j) {
      W[j * r + j] = 1.0 / R[j * r + j];
      for (int i = j + 1; i < r; ++i) {
        double v = 0.0;
        for (int k = j; k < i; ++k) v += R[i * r + k] * W[k * r + j];
        W[i * r + j] = -v / R[i * r + i];
      }
    }
    transpose(r, W, T);
  } else {  // eigen route: P = E Λ Eᵀ, R = E Λ^½, T = E Λ^-½ (zero where λ ≤ kEigTol·λ_max)
    sym_eigh(r, P, lam, X, Y);  // X: eigenvectors as rows
    const double lmax = std::max(lam[r - 1], 0.0);
    for (int t = 0; t < r; ++t) {
      const bool keep = lam[t] > kEigTol * lmax;
      s[t] = keep ? std::sqrt(lam[t]) : 0.0;
      gos[t] = keep ? 1.0 / s[t] : 0.0;
    }
    for (int i = 0; i < r; ++i)
      for (int t = 0; t < r; ++t) {
        R[i * r + t] = X[t * r + i] * s[t];
        T[i * r + t] = X[t * r + i] * gos[t];
      }
  }
  // K = Rᵀ Q R = V diag(σ²) Vᵀ
  mm(r, Q, R, W);
  transpose(r, R, X);
  mm(r, X, W, K);
  for (int i = 0; i < r; ++i)
    for (int j = i + 1; j < r; ++j) K[i * r + j] = K[j * r + i] = 0.5 * (K[i * r + j] + K[j * r + i]);
  sym_eigh(r, K, lam, X, Y);
  for (int t = 0; t < r; ++t) {  // descending order
    sig[t] = std::sqrt(std::max(lam[r - 1 - t], 0.0));
    std::copy(X + (r - 1 - t) * r, X + (r - t) * r, Vt + t * r);
  }
  if (sigma_out) std::copy(sig, sig + r, sigma_out);
  if (kind == kSingularValues) {
    *value = 0.0;
    return;
  }
  const double smax = sig[0];
  if (!(smax * smax > kZeroProduct * kZeroProduct * trP * trQ)) return finish_const(0.0, 0.0);
  for (int t = 0; t < r; ++t) s[t] = sig[t] > kSigmaTol * smax ? sig[t] : 0.0;
  *value = kind_value_and_gos(kind, r, s, gos);
  if (!need) return;
  // N = T (V diag(g/σ) Vᵀ) Rᵀ; V D Vᵀ = Vtᵀ diag(g/σ) Vt
  for (int t = 0; t < r; ++t)
    for (int i = 0; i < r; ++i) X[t * r + i] = gos[t] * Vt[t * r + i];
  transpose(r, Vt, Y);
  mm(r, Y, X, W);  // V D Vᵀ
  mm(r, T, W, X);
  transpose(r, R, Y);
  mm(r, X, Y, N);
  mm(r, N, Q, FB);
  mm(r, P, N, FA);
}

// ---- ops ------------------------------------------------------------------------------------

int parse_kind(c10::string_view kind) {
  if (kind == "fro_nuclear") return kFroNuclear;
  if (kind == "entropy") return kEntropy;
  if (kind == "stable_rank") return kStableRank;
  if (kind == "participation") return kParticipation;
  TORCH_CHECK_VALUE(false, "unknown spectral penalty kind '", std::string(kind),
                    "'; expected one of fro_nuclear, entropy, stable_rank, participation");
}

static int max_rank(const at::TensorList& A) {
  int r = 1;
  for (const auto& a : A) r = std::max<int>(r, static_cast<int>(a.size(0)));
  return r;
}

// Packed Grams: per pair P (r × r) then Q (r × r), full symmetric, float64.
static at::Tensor grams_cpu(const at::TensorList& A, const at::TensorList& B, std::vector<int64_t>& offs) {
  offs.assign(A.size() + 1, 0);
  for (size_t i = 0; i < A.size(); ++i) offs[i + 1] = offs[i] + 2 * A[i].size(0) * A[i].size(0);
  at::Tensor grams = at::empty({offs.back()}, at::TensorOptions().dtype(at::kDouble));
  double* g = grams.data_ptr<double>();
  run_items(make_items(A, B), max_rank(A), [&](const Item& it, Scratch& s) {
    const int r = static_cast<int>(A[it.pair].size(0));
    double* G = g + offs[it.pair] + (it.side == 0 ? 0 : r * r);
    gram_item(it.side == 0 ? B[it.pair] : A[it.pair], it.side, r, G, s);
    for (int i = 0; i < r; ++i)
      for (int j = i + 1; j < r; ++j) G[j * r + i] = G[i * r + j];
  });
  return grams;
}

at::Tensor spectral_grams_cpu(at::TensorList A, at::TensorList B) {
  check_pairs(A, B, "spectral_grams");
  std::vector<int64_t> offs;
  return grams_cpu(A, B, offs);
}

std::tuple<at::Tensor, at::Tensor> spectral_forward_cpu(at::TensorList A, at::TensorList B, c10::string_view kind_name,
                                                       bool need_factors) {
  check_pairs(A, B, "spectral_forward");
  const int kind = parse_kind(kind_name);
  const int64_t n = static_cast<int64_t>(A.size());
  std::vector<int64_t> offs;
  at::Tensor grams = grams_cpu(A, B, offs);
  at::Tensor values = at::empty({n}, at::TensorOptions().dtype(at::kDouble));
  at::Tensor factors = at::zeros({need_factors ? offs.back() : 0}, at::TensorOptions().dtype(at::kDouble));
  const double* g = grams.data_ptr<double>();
  double* v = values.data_ptr<double>();
  double* f = factors.data_ptr<double>();
  run_pairs(n, [&](int64_t i) {
    const int r = static_cast<int>(A[i].size(0));
    const double* P = g + offs[i];
    double* FB = need_factors ? f + offs[i] : nullptr;
    rxr_pair(kind, r, P, P + r * r, need_factors, v + i, nullptr, FB, FB ? FB + r * r : nullptr);
  });
  return {values, factors};
}

// Separate gradient tensors (the registered op), or (the eager path's `grouped`) slices of one
// block per dtype that is reused from step to step once the previous gradients are dropped
// (empty_like_grouped): fresh memory's first-touch faults cost more than the kernel writing it.
static void allocate_gradients(const at::TensorList& A, const at::TensorList& B, bool grouped,
                               std::vector<at::Tensor>& gA, std::vector<at::Tensor>& gB) {
  if (grouped) {
    gA = empty_like_grouped(A, /*reuse_slot=*/0);
    gB = empty_like_grouped(B, /*reuse_slot=*/1);
    return;
  }
  for (size_t i = 0; i < A.size(); ++i) {
    gA.push_back(at::empty_like(A[i], at::MemoryFormat::Contiguous));
    gB.push_back(at::empty_like(B[i], at::MemoryFormat::Contiguous));
  }
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> spectral_backward_impl_cpu(
    at::TensorList A, at::TensorList B, const at::Tensor& factors, const at::Tensor& grad_values, bool grouped) {
  check_pairs(A, B, "spectral_backward");
  const int64_t n = static_cast<int64_t>(A.size());
  std::vector<int64_t> offs(n + 1, 0);
  for (int64_t i = 0; i < n; ++i) offs[i + 1] = offs[i] + 2 * A[i].size(0) * A[i].size(0);
  TORCH_CHECK(factors.numel() == offs.back() && factors.scalar_type() == at::kDouble,
              "spectral_backward: factors must be float64 with ", offs.back(), " elements (got ", factors.numel(),
              "); call spectral_forward with need_factors=True");
  TORCH_CHECK(grad_values.numel() == n, "spectral_backward: grad_values must have one entry per pair");
  at::Tensor fac = factors.contiguous();
  at::Tensor gv = grad_values.to(at::kDouble).contiguous();
  std::vector<at::Tensor> gA, gB;
  allocate_gradients(A, B, grouped, gA, gB);
  const double* f = fac.data_ptr<double>();
  const double* gvp = gv.data_ptr<double>();
  run_items(make_items(A, B), max_rank(A), [&](const Item& it, Scratch& s) {
    const int r = static_cast<int>(A[it.pair].size(0));
    const double* F = f + offs[it.pair] + (it.side == 0 ? 0 : r * r);
    if (it.side == 0) apply_item(B[it.pair], 0, r, F, gvp[it.pair], gB[it.pair], s);
    else apply_item(A[it.pair], 1, r, F, gvp[it.pair], gA[it.pair], s);
  });
  return {gA, gB};
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> spectral_backward_cpu(at::TensorList A, at::TensorList B,
                                                                                   const at::Tensor& factors,
                                                                                   const at::Tensor& grad_values) {
  return spectral_backward_impl_cpu(A, B, factors, grad_values, false);
}

at::Tensor spectral_singular_values_cpu(at::TensorList A, at::TensorList B) {
  check_pairs(A, B, "spectral_singular_values");
  const int64_t n = static_cast<int64_t>(A.size());
  std::vector<int64_t> offs;
  at::Tensor grams = grams_cpu(A, B, offs);
  std::vector<int64_t> so(n + 1, 0);
  for (int64_t i = 0; i < n; ++i) so[i + 1] = so[i] + A[i].size(0);
  at::Tensor sig64 = at::empty({so.back()}, at::TensorOptions().dtype(at::kDouble));
  const double* g = grams.data_ptr<double>();
  double* sp = sig64.data_ptr<double>();
  run_pairs(n, [&](int64_t i) {
    const int r = static_cast<int>(A[i].size(0));
    double value;
    rxr_pair(kSingularValues, r, g + offs[i], g + offs[i] + r * r, false, &value, sp + so[i], nullptr, nullptr);
  });
  return sig64.to(at::kFloat);
}

}  // namespace cpu
}  // namespace spectral
}  // namespace evilbench

TORCH_LIBRARY_IMPL(evilbench, CPU, m) {
  using namespace evilbench::spectral::cpu;
  m.impl("spectral_grams", &spectral_grams_cpu);
  m.impl("spectral_forward", &spectral_forward_cpu);
  m.impl("spectral_backward", &spectral_backward_cpu);
  m.impl("spectral_singular_values", &spectral_singular_values_cpu);
}
