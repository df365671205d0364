// CPU micro-kernels of the spectral penalty on packed float32 panels. Included twice by spectral.cpp:
// once under `#pragma GCC target("avx2,fma")` with EB_SIMD_AVX2 defined (namespace avx2), once
// portable (namespace generic); spectral.cpp picks one at run time. No include guard on purpose.
//
// Panels: a "row panel" holds c rows of r values (B, m × r) padded to rp = roundup(r, 8) columns;
// a "column panel" holds r rows of a column chunk of A (r × n) padded to kp = roundup(kc, 8).
// Grams are accumulated in float32 over one panel, then added into float64 (short float32 runs keep
// the rounding error near float32 epsilon whatever the length of A and B).

namespace EB_SIMD_NS {

#ifdef EB_SIMD_AVX2
using vf = __m256;
static inline vf v_zero() { return _mm256_setzero_ps(); }
static inline vf v_load(const float* p) { return _mm256_loadu_ps(p); }
static inline void v_store(float* p, vf x) { _mm256_storeu_ps(p, x); }
static inline vf v_bcast(const float* p) { return _mm256_broadcast_ss(p); }
static inline vf v_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
using vd = __m256d;
static inline vd vd_zero() { return _mm256_setzero_pd(); }
static inline vd vd_load(const double* p) { return _mm256_loadu_pd(p); }
static inline vd vd_bcast(const double* p) { return _mm256_broadcast_sd(p); }
static inline vd vd_fma(vd a, vd b, vd c) { return _mm256_fmadd_pd(a, b, c); }
static inline void vd_addto(double* p, vd x) { _mm256_storeu_pd(p, _mm256_add_pd(_mm256_loadu_pd(p), x)); }
// sums of the 4 lanes of a, b, c, d
static inline void vd_hsum4(vd a, vd b, vd c, vd d, double* out4) {
  __m256d ab = _mm256_hadd_pd(a, b);  // a0+a1, b0+b1, a2+a3, b2+b3
  __m256d cd = _mm256_hadd_pd(c, d);
  __m256d lo = _mm256_permute2f128_pd(ab, cd, 0x20);  // a0+a1, b0+b1, c0+c1, d0+d1
  __m256d hi = _mm256_permute2f128_pd(ab, cd, 0x31);  // a2+a3, b2+b3, c2+c3, d2+d3
  _mm256_storeu_pd(out4, _mm256_add_pd(lo, hi));
}
#else
struct vf {
  float x[8];
};
static inline vf v_zero() { return vf{{0, 0, 0, 0, 0, 0, 0, 0}}; }
static inline vf v_load(const float* p) {
  vf v;
  for (int l = 0; l < 8; ++l) v.x[l] = p[l];
  return v;
}
static inline void v_store(float* p, vf v) {
  for (int l = 0; l < 8; ++l) p[l] = v.x[l];
}
static inline vf v_bcast(const float* p) {
  vf v;
  for (int l = 0; l < 8; ++l) v.x[l] = *p;
  return v;
}
static inline vf v_fma(vf a, vf b, vf c) {
  for (int l = 0; l < 8; ++l) c.x[l] += a.x[l] * b.x[l];
  return c;
}
struct vd {
  double x[4];
};
static inline vd vd_zero() { return vd{{0, 0, 0, 0}}; }
static inline vd vd_load(const double* p) {
  vd v;
  for (int l = 0; l < 4; ++l) v.x[l] = p[l];
  return v;
}
static inline vd vd_bcast(const double* p) {
  vd v;
  for (int l = 0; l < 4; ++l) v.x[l] = *p;
  return v;
}
static inline vd vd_fma(vd a, vd b, vd c) {
  for (int l = 0; l < 4; ++l) c.x[l] += a.x[l] * b.x[l];
  return c;
}
static inline void vd_addto(double* p, vd v) {
  for (int l = 0; l < 4; ++l) p[l] += v.x[l];
}
static inline void vd_hsum4(vd a, vd b, vd c, vd d, double* out4) {
  const vd* vs[4] = {&a, &b, &c, &d};
  for (int q = 0; q < 4; ++q) out4[q] = (vs[q]->x[0] + vs[q]->x[1]) + (vs[q]->x[2] + vs[q]->x[3]);
}
#endif

// ---- pass 1: Grams in float64 -----------------------------------------------------------------
// Products of float32/bfloat16/float16 values are exact in float64, so the Grams are accurate to
// ~1e-16 relative: the zero-singular-value threshold (1e-6 σ₁) sits far above their noise.

// G (rp × rp, row-major) += Xᵀ X over a double row panel X (c × rp, rp a multiple of 4), tile of NI
// rows of G × NV vectors of 4 columns starting at row i0, column vector jv0.
// (Accumulators are named variables, not arrays: GCC keeps arrays of vectors in memory.)
#define EB_IF(c, stmt) \
  if constexpr (c) {   \
    stmt;              \
  }
template <int NI, int NV>
static inline void gram_rows_tile(const double* X, int64_t c, int rp, int i0, int jv0, double* G) {
  vd a00 = vd_zero(), a01 = vd_zero(), a02 = vd_zero(), a03 = vd_zero();
  vd a10 = vd_zero(), a11 = vd_zero(), a12 = vd_zero(), a13 = vd_zero();
  vd a20 = vd_zero(), a21 = vd_zero(), a22 = vd_zero(), a23 = vd_zero();
  const double* x = X;
  const int j0 = jv0 * 4;
  for (int64_t k = 0; k < c; ++k, x += rp) {
    vd x0 = vd_load(x + j0), x1 = x0, x2 = x0, x3 = x0;
    EB_IF(NV > 1, x1 = vd_load(x + j0 + 4));
    EB_IF(NV > 2, x2 = vd_load(x + j0 + 8));
    EB_IF(NV > 3, x3 = vd_load(x + j0 + 12));
    vd b = vd_bcast(x + i0);
    a00 = vd_fma(b, x0, a00);
    EB_IF(NV > 1, a01 = vd_fma(b, x1, a01));
    EB_IF(NV > 2, a02 = vd_fma(b, x2, a02));
    EB_IF(NV > 3, a03 = vd_fma(b, x3, a03));
    if constexpr (NI > 1) {
      b = vd_bcast(x + i0 + 1);
      a10 = vd_fma(b, x0, a10);
      EB_IF(NV > 1, a11 = vd_fma(b, x1, a11));
      EB_IF(NV > 2, a12 = vd_fma(b, x2, a12));
      EB_IF(NV > 3, a13 = vd_fma(b, x3, a13));
    }
    if constexpr (NI > 2) {
      b = vd_bcast(x + i0 + 2);
      a20 = vd_fma(b, x0, a20);
      EB_IF(NV > 1, a21 = vd_fma(b, x1, a21));
      EB_IF(NV > 2, a22 = vd_fma(b, x2, a22));
      EB_IF(NV > 3, a23 = vd_fma(b, x3, a23));
    }
  }
  double* g = G + static_cast<int64_t>(i0) * rp + j0;
  vd_addto(g, a00);
  EB_IF(NV > 1, vd_addto(g + 4, a01));
  EB_IF(NV > 2, vd_addto(g + 8, a02));
  EB_IF(NV > 3, vd_addto(g + 12, a03));
  if constexpr (NI > 1) {
    g += rp;
    vd_addto(g, a10);
    EB_IF(NV > 1, vd_addto(g + 4, a11));
    EB_IF(NV > 2, vd_addto(g + 8, a12));
    EB_IF(NV > 3, vd_addto(g + 12, a13));
  }
  if constexpr (NI > 2) {
    g += rp;
    vd_addto(g, a20);
    EB_IF(NV > 1, vd_addto(g + 4, a21));
    EB_IF(NV > 2, vd_addto(g + 8, a22));
    EB_IF(NV > 3, vd_addto(g + 12, a23));
  }
}

template <int NI>
static inline void gram_rows_tile_nv(const double* X, int64_t c, int rp, int i0, int jv0, int nv, double* G) {
  switch (nv) {
    case 1: gram_rows_tile<NI, 1>(X, c, rp, i0, jv0, G); break;
    case 2: gram_rows_tile<NI, 2>(X, c, rp, i0, jv0, G); break;
    case 3: gram_rows_tile<NI, 3>(X, c, rp, i0, jv0, G); break;
    default: gram_rows_tile<NI, 4>(X, c, rp, i0, jv0, G); break;
  }
}

// Upper-triangular blocks of G += Xᵀ X for a row panel (the caller fills the lower triangle).
static inline void gram_rows(const double* X, int64_t c, int r, int rp, double* G) {
  const int nvec = rp / 4;
  for (int i0 = 0; i0 < r; i0 += 3) {
    const int ni = r - i0 < 3 ? r - i0 : 3;
    for (int jv0 = i0 / 4; jv0 < nvec; jv0 += 4) {
      const int nv = nvec - jv0 < 4 ? nvec - jv0 : 4;
      if (ni == 3) gram_rows_tile_nv<3>(X, c, rp, i0, jv0, nv, G);
      else if (ni == 2) gram_rows_tile_nv<2>(X, c, rp, i0, jv0, nv, G);
      else gram_rows_tile_nv<1>(X, c, rp, i0, jv0, nv, G);
    }
  }
}

// G (r × r) += X Xᵀ over a double column panel X (r × kp, kp a multiple of 4), upper triangle in
// tiles of 4 × 3 rows.
template <int NI, int NJ>
static inline void gram_cols_tile(const double* X, int64_t kp, int i0, int j0, int r, double* G) {
  vd a00 = vd_zero(), a01 = vd_zero(), a02 = vd_zero();
  vd a10 = vd_zero(), a11 = vd_zero(), a12 = vd_zero();
  vd a20 = vd_zero(), a21 = vd_zero(), a22 = vd_zero();
  vd a30 = vd_zero(), a31 = vd_zero(), a32 = vd_zero();
  const double* xi = X + i0 * kp;
  const double* xj = X + j0 * kp;
  for (int64_t k = 0; k < kp; k += 4) {
    vd y0 = vd_load(xj + k), y1 = y0, y2 = y0;
    EB_IF(NJ > 1, y1 = vd_load(xj + kp + k));
    EB_IF(NJ > 2, y2 = vd_load(xj + 2 * kp + k));
    vd v = vd_load(xi + k);
    a00 = vd_fma(v, y0, a00);
    EB_IF(NJ > 1, a01 = vd_fma(v, y1, a01));
    EB_IF(NJ > 2, a02 = vd_fma(v, y2, a02));
    if constexpr (NI > 1) {
      v = vd_load(xi + kp + k);
      a10 = vd_fma(v, y0, a10);
      EB_IF(NJ > 1, a11 = vd_fma(v, y1, a11));
      EB_IF(NJ > 2, a12 = vd_fma(v, y2, a12));
    }
    if constexpr (NI > 2) {
      v = vd_load(xi + 2 * kp + k);
      a20 = vd_fma(v, y0, a20);
      EB_IF(NJ > 1, a21 = vd_fma(v, y1, a21));
      EB_IF(NJ > 2, a22 = vd_fma(v, y2, a22));
    }
    if constexpr (NI > 3) {
      v = vd_load(xi + 3 * kp + k);
      a30 = vd_fma(v, y0, a30);
      EB_IF(NJ > 1, a31 = vd_fma(v, y1, a31));
      EB_IF(NJ > 2, a32 = vd_fma(v, y2, a32));
    }
  }
  double s[4];
  vd_hsum4(a00, a10, a20, a30, s);
  for (int a = 0; a < NI; ++a) G[(i0 + a) * r + j0] += s[a];
  if constexpr (NJ > 1) {
    vd_hsum4(a01, a11, a21, a31, s);
    for (int a = 0; a < NI; ++a) G[(i0 + a) * r + j0 + 1] += s[a];
  }
  if constexpr (NJ > 2) {
    vd_hsum4(a02, a12, a22, a32, s);
    for (int a = 0; a < NI; ++a) G[(i0 + a) * r + j0 + 2] += s[a];
  }
}

static inline void gram_cols(const double* X, int64_t kp, int r, double* G) {
  for (int i0 = 0; i0 < r; i0 += 4) {
    const int ni = r - i0 < 4 ? r - i0 : 4;
    for (int j0 = i0; j0 < r; j0 += 3) {
      const int nj = r - j0 < 3 ? r - j0 : 3;
#define EB_GC(NI_, NJ_) \
  if (ni == NI_ && nj == NJ_) gram_cols_tile<NI_, NJ_>(X, kp, i0, j0, r, G)
      EB_GC(4, 3); else EB_GC(4, 2); else EB_GC(4, 1); else EB_GC(3, 3); else EB_GC(3, 2); else EB_GC(3, 1);
      else EB_GC(2, 3); else EB_GC(2, 2); else EB_GC(2, 1); else EB_GC(1, 3); else EB_GC(1, 2); else EB_GC(1, 1);
#undef EB_GC
    }
  }
}

// ---- pass 2: apply r × r factors -----------------------------------------------------------

// Y (c × rp) = X (c × rp) F (rp × rp, zero-padded), tiles of NI rows × NV vectors.
template <int NI, int NV>
static inline void apply_rows_tile(const float* X, int r, int rp, const float* F, int64_t k0, int jv0, float* Y) {
  vf a00 = v_zero(), a01 = v_zero(), a02 = v_zero(), a03 = v_zero();
  vf a10 = v_zero(), a11 = v_zero(), a12 = v_zero(), a13 = v_zero();
  vf a20 = v_zero(), a21 = v_zero(), a22 = v_zero(), a23 = v_zero();
  const int j0 = jv0 * 8;
  const float* x = X + k0 * rp;
  const float* f = F + j0;
  for (int i = 0; i < r; ++i, f += rp) {
    vf f0 = v_load(f), f1 = f0, f2 = f0, f3 = f0;
    EB_IF(NV > 1, f1 = v_load(f + 8));
    EB_IF(NV > 2, f2 = v_load(f + 16));
    EB_IF(NV > 3, f3 = v_load(f + 24));
    vf b = v_bcast(x + i);
    a00 = v_fma(b, f0, a00);
    EB_IF(NV > 1, a01 = v_fma(b, f1, a01));
    EB_IF(NV > 2, a02 = v_fma(b, f2, a02));
    EB_IF(NV > 3, a03 = v_fma(b, f3, a03));
    if constexpr (NI > 1) {
      b = v_bcast(x + rp + i);
      a10 = v_fma(b, f0, a10);
      EB_IF(NV > 1, a11 = v_fma(b, f1, a11));
      EB_IF(NV > 2, a12 = v_fma(b, f2, a12));
      EB_IF(NV > 3, a13 = v_fma(b, f3, a13));
    }
    if constexpr (NI > 2) {
      b = v_bcast(x + 2 * rp + i);
      a20 = v_fma(b, f0, a20);
      EB_IF(NV > 1, a21 = v_fma(b, f1, a21));
      EB_IF(NV > 2, a22 = v_fma(b, f2, a22));
      EB_IF(NV > 3, a23 = v_fma(b, f3, a23));
    }
  }
  float* y = Y + k0 * rp + j0;
  v_store(y, a00);
  EB_IF(NV > 1, v_store(y + 8, a01));
  EB_IF(NV > 2, v_store(y + 16, a02));
  EB_IF(NV > 3, v_store(y + 24, a03));
  if constexpr (NI > 1) {
    y += rp;
    v_store(y, a10);
    EB_IF(NV > 1, v_store(y + 8, a11));
    EB_IF(NV > 2, v_store(y + 16, a12));
    EB_IF(NV > 3, v_store(y + 24, a13));
  }
  if constexpr (NI > 2) {
    y += rp;
    v_store(y, a20);
    EB_IF(NV > 1, v_store(y + 8, a21));
    EB_IF(NV > 2, v_store(y + 16, a22));
    EB_IF(NV > 3, v_store(y + 24, a23));
  }
}

template <int NI>
static inline void apply_rows_nv(const float* X, int r, int rp, const float* F, int64_t k0, int jv0, int nv, float* Y) {
  switch (nv) {
    case 1: apply_rows_tile<NI, 1>(X, r, rp, F, k0, jv0, Y); break;
    case 2: apply_rows_tile<NI, 2>(X, r, rp, F, k0, jv0, Y); break;
    case 3: apply_rows_tile<NI, 3>(X, r, rp, F, k0, jv0, Y); break;
    default: apply_rows_tile<NI, 4>(X, r, rp, F, k0, jv0, Y); break;
  }
}

static inline void apply_rows(const float* X, int64_t c, int r, int rp, const float* F, float* Y) {
  const int nvec = rp / 8;
  int64_t k0 = 0;
  for (; k0 + 3 <= c; k0 += 3)
    for (int jv0 = 0; jv0 < nvec; jv0 += 4) apply_rows_nv<3>(X, r, rp, F, k0, jv0, nvec - jv0 < 4 ? nvec - jv0 : 4, Y);
  for (; k0 < c; ++k0)
    for (int jv0 = 0; jv0 < nvec; jv0 += 4) apply_rows_nv<1>(X, r, rp, F, k0, jv0, nvec - jv0 < 4 ? nvec - jv0 : 4, Y);
}

// Y (r × kc, row stride ldy) = F (r × r, row stride rp) X (r × kc, row stride ldx), kc a multiple
// of 16, in tiles of NI rows × 2 vectors of columns.
template <int NI>
static inline void apply_cols_tile(const float* X, int64_t ldx, int r, int rp, const float* F, int i0, int64_t k,
                                   float* Y, int64_t ldy) {
  vf a00 = v_zero(), a01 = v_zero(), a10 = v_zero(), a11 = v_zero(), a20 = v_zero(), a21 = v_zero();
  vf a30 = v_zero(), a31 = v_zero(), a40 = v_zero(), a41 = v_zero(), a50 = v_zero(), a51 = v_zero();
  const float* x = X + k;
  const float* f = F + i0 * rp;
  for (int j = 0; j < r; ++j, x += ldx) {
    vf x0 = v_load(x), x1 = v_load(x + 8);
    vf b = v_bcast(f + j);
    a00 = v_fma(b, x0, a00);
    a01 = v_fma(b, x1, a01);
#define EB_AC(A_, A0, A1)                 \
  if constexpr (NI > A_) {                \
    b = v_bcast(f + (A_) * rp + j);       \
    A0 = v_fma(b, x0, A0);                \
    A1 = v_fma(b, x1, A1);                \
  }
    EB_AC(1, a10, a11) EB_AC(2, a20, a21) EB_AC(3, a30, a31) EB_AC(4, a40, a41) EB_AC(5, a50, a51)
#undef EB_AC
  }
  float* y = Y + i0 * ldy + k;
  v_store(y, a00);
  v_store(y + 8, a01);
#define EB_ST(A_, A0, A1)                     \
  if constexpr (NI > A_) {                    \
    v_store(y + (A_) * ldy, A0);              \
    v_store(y + (A_) * ldy + 8, A1);          \
  }
  EB_ST(1, a10, a11) EB_ST(2, a20, a21) EB_ST(3, a30, a31) EB_ST(4, a40, a41) EB_ST(5, a50, a51)
#undef EB_ST
}

static inline void apply_cols(const float* X, int64_t ldx, int64_t kc, int r, int rp, const float* F, float* Y,
                              int64_t ldy) {
  for (int64_t k = 0; k < kc; k += 16) {
    int i0 = 0;
    for (; i0 + 6 <= r; i0 += 6) apply_cols_tile<6>(X, ldx, r, rp, F, i0, k, Y, ldy);
    switch (r - i0) {
      case 5: apply_cols_tile<5>(X, ldx, r, rp, F, i0, k, Y, ldy); break;
      case 4: apply_cols_tile<4>(X, ldx, r, rp, F, i0, k, Y, ldy); break;
      case 3: apply_cols_tile<3>(X, ldx, r, rp, F, i0, k, Y, ldy); break;
      case 2: apply_cols_tile<2>(X, ldx, r, rp, F, i0, k, Y, ldy); break;
      case 1: apply_cols_tile<1>(X, ldx, r, rp, F, i0, k, Y, ldy); break;
      default: break;
    }
  }
}

// ---- packing / unpacking (input dtype T: float, c10::BFloat16, c10::Half, converted on the fly) --

template <typename T, typename P>
static inline void pack_rows(const T* src, int64_t c, int r, int rp, P* dst) {
  for (int64_t k = 0; k < c; ++k) {
    const T* s = src + k * r;
    P* d = dst + k * rp;
    for (int i = 0; i < r; ++i) d[i] = static_cast<P>(static_cast<float>(s[i]));
    for (int i = r; i < rp; ++i) d[i] = P(0);
  }
}

template <typename T, typename P>
static inline void pack_cols(const T* src, int r, int64_t ld, int64_t kc, int64_t kp, P* dst) {
  for (int i = 0; i < r; ++i) {
    const T* s = src + i * ld;
    P* d = dst + i * kp;
    for (int64_t k = 0; k < kc; ++k) d[k] = static_cast<P>(static_cast<float>(s[k]));
    for (int64_t k = kc; k < kp; ++k) d[k] = P(0);
  }
}

template <typename T>
static inline void unpack_rows(const float* Y, int64_t c, int r, int rp, T* dst) {
  for (int64_t k = 0; k < c; ++k)
    for (int i = 0; i < r; ++i) dst[k * r + i] = static_cast<T>(Y[k * rp + i]);
}

template <typename T>
static inline void unpack_cols(const float* Y, int r, int64_t kp, int64_t kc, int64_t ld, T* dst) {
  for (int i = 0; i < r; ++i)
    for (int64_t k = 0; k < kc; ++k) dst[i * ld + k] = static_cast<T>(Y[i * kp + k]);
}

// ---- whole matrices ------------------------------------------------------------------------

// P (upper triangle, r × r) = Bᵀ B for B (m × r) of dtype T. panel: double row panel; Gp: rp4² doubles.
template <typename T>
static void gram_of_rows(const T* B, int64_t m, int r, double* P, double* panel, double* Gp) {
  const int rp = (r + 3) / 4 * 4;
  const int64_t kc = gram_rows_per_panel(rp);
  for (int64_t i = 0; i < static_cast<int64_t>(rp) * rp; ++i) Gp[i] = 0.0;
  for (int64_t k0 = 0; k0 < m; k0 += kc) {
    const int64_t c = m - k0 < kc ? m - k0 : kc;
    pack_rows(B + k0 * r, c, r, rp, panel);
    gram_rows(panel, c, r, rp, Gp);
  }
  for (int i = 0; i < r; ++i)
    for (int j = i; j < r; ++j) P[i * r + j] = Gp[i * rp + j];
}

// Q (upper triangle, r × r) = A Aᵀ for A (r × n) of dtype T. panel: double column panel.
template <typename T>
static void gram_of_cols(const T* A, int r, int64_t n, double* Q, double* panel) {
  const int64_t kc = gram_cols_per_panel(r);
  for (int64_t i = 0; i < static_cast<int64_t>(r) * r; ++i) Q[i] = 0.0;
  for (int64_t k0 = 0; k0 < n; k0 += kc) {
    const int64_t c = n - k0 < kc ? n - k0 : kc;
    const int64_t kp = (c + 3) / 4 * 4;
    pack_cols(A + k0, r, n, c, kp, panel);
    gram_cols(panel, kp, r, Q);
  }
}

// gB (m × r) = B (m × r) F, F given as padded rp × rp float32 (rp = roundup(r, 8)).
template <typename T>
static void apply_to_rows(const T* B, int64_t m, int r, const float* Fp, T* gB, float* panel, float* out) {
  const int rp = (r + 7) / 8 * 8;
  if (std::is_same<T, float>::value && r == rp) {  // float32 with r % 8 == 0: straight from B into gB
    apply_rows(reinterpret_cast<const float*>(B), m, r, rp, Fp, reinterpret_cast<float*>(gB));
    return;
  }
  const int64_t kc = apply_rows_per_panel(rp);
  for (int64_t k0 = 0; k0 < m; k0 += kc) {
    const int64_t c = m - k0 < kc ? m - k0 : kc;
    pack_rows(B + k0 * r, c, r, rp, panel);
    apply_rows(panel, c, r, rp, Fp, out);
    unpack_rows(out, c, r, rp, gB + k0 * r);
  }
}

// gA (r × n) = F A (r × n), F float32 with row stride rp.
template <typename T>
static void apply_to_cols(const T* A, int r, int64_t n, const float* Fp, T* gA, float* panel, float* out) {
  const int rp = (r + 7) / 8 * 8;
  const int64_t kc = apply_cols_per_panel(r);
  int64_t k0 = 0;
  if (std::is_same<T, float>::value) {  // float32: full 16-column blocks straight from A into gA
    const int64_t n16 = n / 16 * 16;
    const float* Af = reinterpret_cast<const float*>(A);
    float* gAf = reinterpret_cast<float*>(gA);
    for (; k0 < n16; k0 += kc) {
      const int64_t c = n16 - k0 < kc ? n16 - k0 : kc;
      apply_cols(Af + k0, n, c, r, rp, Fp, gAf + k0, n);
    }
    k0 = n16;
  }
  for (; k0 < n; k0 += kc) {
    const int64_t c = n - k0 < kc ? n - k0 : kc;
    const int64_t kp = (c + 15) / 16 * 16;
    pack_cols(A + k0, r, n, c, kp, panel);
    apply_cols(panel, kp, kp, r, rp, Fp, out, kp);
    unpack_cols(out, r, kp, c, n, gA + k0);
  }
}

#undef EB_IF
}  // namespace EB_SIMD_NS
