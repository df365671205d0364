// Torch glue for the CUDA spectral-penalty kernels (spectral.cu): input checks, the work table
// (pairs + chunks, copied to the device with one async copy from pinned memory), output allocation.
// Three kernel launches per forward / backward, whatever the number of pairs; no host syncs.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstring>
#include <string>
#include <vector>

#include "../spectral_common.h"
#include "../spectral_torch.h"
#include "spectral_cuda.h"

namespace evilbench {
namespace spectral {
namespace cuda {

static int dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return kF32;
    case at::kDouble: return kF64;
    case at::kBFloat16: return kBF16;
    case at::kHalf: return kF16;
    default: TORCH_CHECK(false, "spectral: unsupported dtype ", t.scalar_type());
  }
  return -1;
}

static void check_pairs(const at::TensorList& A, const at::TensorList& B, const char* who) {
  check_pairs_with(A, B, who, [&](size_t i) {
    TORCH_CHECK(A[i].size(0) <= kMaxRankCuda, who, ": pair ", i, ": rank ", A[i].size(0), " > ", kMaxRankCuda,
                " is not supported by the CUDA kernels (use CPU tensors)");
    for (const at::Tensor* t : {&A[i], &B[i]}) {
      TORCH_CHECK(t->device() == A[0].device(), who, ": pair ", i, ": all matrices must be on ", A[0].device());
      dtype_code(*t);
    }
  });
}

struct Table {
  std::vector<PairDesc> pairs;
  std::vector<ChunkDesc> chunks;
  int64_t partial_doubles = 0, factor_doubles = 0, sigma_floats = 0;
  int rmax = 1;
  at::Tensor device;  // pairs then chunks, uploaded
};

static Table build_table(const at::TensorList& A, const at::TensorList& B, const std::vector<at::Tensor>* gA,
                         const std::vector<at::Tensor>* gB) {
  Table t;
  const int64_t n = static_cast<int64_t>(A.size());
  t.pairs.resize(n);
  int64_t gram_off = 0;
  for (int64_t i = 0; i < n; ++i) {
    PairDesc& d = t.pairs[i];
    std::memset(&d, 0, sizeof(d));
    const int r = static_cast<int>(A[i].size(0));
    t.rmax = std::max(t.rmax, r);
    d.A = A[i].data_ptr();
    d.B = B[i].data_ptr();
    d.gA = gA ? (*gA)[i].data_ptr() : nullptr;
    d.gB = gB ? (*gB)[i].data_ptr() : nullptr;
    d.n = A[i].size(1);
    d.m = B[i].size(0);
    d.r = r;
    d.dtA = dtype_code(A[i]);
    d.dtB = dtype_code(B[i]);
    d.gram_off = gram_off;
    d.fac_off = gram_off;  // same layout: two r² blocks per pair
    d.sig_off = t.sigma_floats;
    gram_off += 2LL * r * r;
    t.sigma_floats += r;
    for (int side = 0; side < 2; ++side) {
      const int64_t len = side == 0 ? d.m : d.n;
      (side == 0 ? d.p_chunk0 : d.q_chunk0) = static_cast<int>(t.chunks.size());
      int count = 0;
      for (int64_t s = 0; s < len; s += kChunkLen) {
        ChunkDesc c;
        c.pair = static_cast<int>(i);
        c.side = side;
        c.start = s;
        c.len = std::min<int64_t>(kChunkLen, len - s);
        c.part_off = t.partial_doubles;
        t.partial_doubles += static_cast<int64_t>(r) * r;
        t.chunks.push_back(c);
        ++count;
      }
      (side == 0 ? d.p_nchunks : d.q_nchunks) = count;
    }
  }
  t.factor_doubles = gram_off;
  const size_t bytes = t.pairs.size() * sizeof(PairDesc) + t.chunks.size() * sizeof(ChunkDesc);
  at::Tensor host = at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.data_ptr(), t.pairs.data(), t.pairs.size() * sizeof(PairDesc));
  std::memcpy(static_cast<char*>(host.data_ptr()) + t.pairs.size() * sizeof(PairDesc), t.chunks.data(),
              t.chunks.size() * sizeof(ChunkDesc));
  t.device = at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte).device(A[0].device()));
  t.device.copy_(host, /*non_blocking=*/true);
  return t;
}

static const PairDesc* dev_pairs(const Table& t) { return reinterpret_cast<const PairDesc*>(t.device.data_ptr()); }
static const ChunkDesc* dev_chunks(const Table& t) {
  return reinterpret_cast<const ChunkDesc*>(static_cast<const char*>(t.device.data_ptr()) +
                                            t.pairs.size() * sizeof(PairDesc));
}

static int parse_kind(c10::string_view kind) {
  if (kind == "fro_nuclear") return kFroNuclear;
  if (kind == "entropy") return kEntropy;
  if (kind == "stable_rank") return kStableRank;
  if (kind == "participation") return kParticipation;
  TORCH_CHECK_VALUE(false, "unknown spectral penalty kind '", std::string(kind),
                    "'; expected one of fro_nuclear, entropy, stable_rank, participation");
  return -1;
}

// Grams pass + r × r kernel in the given mode; returns the partial buffer's owner (kept alive by the stream order).
static void run_front(const Table& t, int mode, bool need, double* values, double* factors, double* grams,
                      float* sigma, const at::Device& dev) {
  auto opts = at::TensorOptions().dtype(at::kDouble).device(dev);
  at::Tensor partials = at::empty({std::max<int64_t>(1, t.partial_doubles)}, opts);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  C10_CUDA_CHECK(launch_gram(dev_pairs(t), dev_chunks(t), static_cast<int>(t.chunks.size()),
                             partials.data_ptr<double>(), t.rmax, stream));
  C10_CUDA_CHECK(launch_rxr(dev_pairs(t), static_cast<int>(t.pairs.size()), dev_chunks(t), partials.data_ptr<double>(),
                            mode, need ? 1 : 0, values, factors, grams, sigma, t.rmax, stream));
}

at::Tensor spectral_grams_cuda(at::TensorList A, at::TensorList B) {
  check_pairs(A, B, "spectral_grams");
  if (A.empty()) return at::empty({0}, at::TensorOptions().dtype(at::kDouble).device(at::kCUDA));
  c10::cuda::CUDAGuard guard(A[0].device());
  Table t = build_table(A, B, nullptr, nullptr);
  at::Tensor grams = at::empty({t.factor_doubles}, at::TensorOptions().dtype(at::kDouble).device(A[0].device()));
  run_front(t, kModeGrams, false, nullptr, nullptr, grams.data_ptr<double>(), nullptr, A[0].device());
  return grams;
}

std::tuple<at::Tensor, at::Tensor> spectral_forward_cuda(at::TensorList A, at::TensorList B, c10::string_view kind_name,
                                                        bool need_factors) {
  check_pairs(A, B, "spectral_forward");
  const int kind = parse_kind(kind_name);
  auto opts = at::TensorOptions().dtype(at::kDouble).device(A.empty() ? at::Device(at::kCUDA) : A[0].device());
  if (A.empty()) return {at::empty({0}, opts), at::empty({0}, opts)};
  c10::cuda::CUDAGuard guard(A[0].device());
  Table t = build_table(A, B, nullptr, nullptr);
  at::Tensor values = at::empty({static_cast<int64_t>(A.size())}, opts);
  at::Tensor factors = at::empty({need_factors ? t.factor_doubles : 0}, opts);
  run_front(t, kind, need_factors, values.data_ptr<double>(), need_factors ? factors.data_ptr<double>() : nullptr,
            nullptr, nullptr, A[0].device());
  return {values, factors};
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> spectral_backward_impl_cuda(
    at::TensorList A, at::TensorList B, const at::Tensor& factors, const at::Tensor& grad_values, bool grouped) {
  check_pairs(A, B, "spectral_backward");
  std::vector<at::Tensor> gA, gB;
  if (A.empty()) return {gA, gB};
  c10::cuda::CUDAGuard guard(A[0].device());
  int64_t total = 0;
  for (const auto& a : A) total += 2 * a.size(0) * a.size(0);
  TORCH_CHECK(factors.numel() == total && factors.scalar_type() == at::kDouble && factors.device() == A[0].device(),
              "spectral_backward: factors must be float64 on ", A[0].device(), " with ", total,
              " elements; call spectral_forward with need_factors=True");
  TORCH_CHECK(grad_values.numel() == static_cast<int64_t>(A.size()), "spectral_backward: one grad value per pair");
  if (grouped) {
    gA = empty_like_grouped(A);
    gB = empty_like_grouped(B);
  } else {
    for (size_t i = 0; i < A.size(); ++i) {
      gA.push_back(at::empty_like(A[i]));
      gB.push_back(at::empty_like(B[i]));
    }
  }
  at::Tensor gv = grad_values.to(A[0].device(), at::kDouble).contiguous();
  at::Tensor fac = factors.contiguous();
  Table t = build_table(A, B, &gA, &gB);
  C10_CUDA_CHECK(launch_apply(dev_pairs(t), dev_chunks(t), static_cast<int>(t.chunks.size()), fac.data_ptr<double>(),
                              gv.data_ptr<double>(), t.rmax, c10::cuda::getCurrentCUDAStream()));
  return {gA, gB};
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> spectral_backward_cuda(at::TensorList A, at::TensorList B,
                                                                                    const at::Tensor& factors,
                                                                                    const at::Tensor& grad_values) {
  return spectral_backward_impl_cuda(A, B, factors, grad_values, false);
}

at::Tensor spectral_singular_values_cuda(at::TensorList A, at::TensorList B) {
  check_pairs(A, B, "spectral_singular_values");
  if (A.empty()) return at::empty({0}, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA));
  c10::cuda::CUDAGuard guard(A[0].device());
  Table t = build_table(A, B, nullptr, nullptr);
  at::Tensor sigma = at::empty({t.sigma_floats}, at::TensorOptions().dtype(at::kFloat).device(A[0].device()));
  run_front(t, kSingularValues, false, nullptr, nullptr, nullptr, sigma.data_ptr<float>(), A[0].device());
  return sigma;
}

}  // namespace cuda
}  // namespace spectral
}  // namespace evilbench

TORCH_LIBRARY_IMPL(evilbench, CUDA, m) {
  using namespace evilbench::spectral::cuda;
  m.impl("spectral_grams", &spectral_grams_cuda);
  m.impl("spectral_forward", &spectral_forward_cuda);
  m.impl("spectral_backward", &spectral_backward_cuda);
  m.impl("spectral_singular_values", &spectral_singular_values_cuda);
}
