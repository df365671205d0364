// Torch glue for the Newton–Schulz CUDA kernels: validates inputs, allocates outputs and the
// workspace, builds the device-side work table and launches newton_schulz.cu's kernels
// (3 launches per rank bucket 16 / 32 / 64, whatever the number of matrices).
//
// The work table reaches the device through a content-keyed cache: a call whose table bytes were
// seen before (same tensors: every Muon step, or a benchmark loop) reuses the device copy with no
// transfer at all; a new table is copied once from pinned memory with cudaMemcpyAsync. Nothing
// waits on the device, and entries used while a CUDA graph is being captured are kept for the life
// of the process, so captured graphs stay valid.
// Ranks 65..256 use the same Gram form in float64 with ATen ops; larger ranks the classic iteration.
#include <ATen/ATen.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "../ns_torch.h"
#include "newton_schulz.cuh"

namespace evilbench {
namespace ns_cuda {
namespace {

constexpr int kGramMaxRank = 256;

class TableCache {
 public:
  // Device pointer holding `bytes` (a copy is enqueued on `stream` when the content is new).
  const void* get(const std::string& bytes, int device, cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mu_);
    cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &cap));
    const bool capturing = cap == cudaStreamCaptureStatusActive;
    std::string key = bytes;
    key.append(reinterpret_cast<const char*>(&device), sizeof(device));
    auto it = map_.find(key);
    if (it != map_.end()) {
      Entry& e = it->second;
      e.used = ++clock_;
      if (capturing) e.forever = true;
      if (e.copy_only_in_graph && !capturing) {  // created under capture: the copy is a graph node
        C10_CUDA_CHECK(cudaMemcpyAsync(e.dev.data_ptr(), e.host, bytes.size(), cudaMemcpyHostToDevice, stream));
        e.copy_only_in_graph = false;
      }
      if (stream != e.stream) {
        c10::cuda::CUDACachingAllocator::recordStream(e.dev.storage().data_ptr(),
                                                      c10::cuda::getStreamFromExternal(stream, device));
      }
      return e.dev.data_ptr();
    }
    evict();
    Entry e;
    e.cap = bytes.size();
    e.host = take_host(e.cap);
    std::memcpy(e.host, bytes.data(), bytes.size());
    e.dev = at::empty({(int64_t)bytes.size()}, at::TensorOptions().dtype(at::kByte).device(at::kCUDA, device));
    e.stream = stream;
    C10_CUDA_CHECK(cudaMemcpyAsync(e.dev.data_ptr(), e.host, bytes.size(), cudaMemcpyHostToDevice, stream));
    if (capturing) {
      e.forever = true;
      e.copy_only_in_graph = true;
    } else {
      C10_CUDA_CHECK(cudaEventCreateWithFlags(&e.done, cudaEventDisableTiming));
      C10_CUDA_CHECK(cudaEventRecord(e.done, stream));
    }
    e.used = ++clock_;
    const void* ptr = e.dev.data_ptr();
    map_.emplace(std::move(key), std::move(e));
    return ptr;
  }

 private:
  struct Entry {
    void* host = nullptr;
    size_t cap = 0;
    at::Tensor dev;
    cudaStream_t stream = nullptr;
    cudaEvent_t done = nullptr;
    bool forever = false;
    bool copy_only_in_graph = false;
    uint64_t used = 0;
  };

  void* take_host(size_t size) {
    auto it = free_.lower_bound(size);
    if (it != free_.end()) {
      void* p = it->second;
      free_.erase(it);
      return p;
    }
    void* p = nullptr;
    // cudaHostAlloc is not a stream operation; allow it while a graph is being captured
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    C10_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
    const cudaError_t err = cudaHostAlloc(&p, size, cudaHostAllocDefault);
    C10_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
    C10_CUDA_CHECK(err);
    return p;
  }

  // Drop least recently used entries whose copy has finished, keeping at most kMaxEntries.
  void evict() {
    while (map_.size() >= kMaxEntries) {
      auto victim = map_.end();
      for (auto it = map_.begin(); it != map_.end(); ++it) {
        if (it->second.forever) continue;
        if (victim == map_.end() || it->second.used < victim->second.used) victim = it;
      }
      if (victim == map_.end()) return;
      Entry& e = victim->second;
      if (e.done) {
        const cudaError_t q = cudaEventQuery(e.done);
        if (q == cudaErrorNotReady) {
          (void)cudaGetLastError();
          return;  // keep it; try again next time
        }
        C10_CUDA_CHECK(q);
        C10_CUDA_CHECK(cudaEventDestroy(e.done));
      }
      free_.emplace(e.cap, e.host);  // pinned buffers are recycled, never freed (no implicit syncs)
      map_.erase(victim);
    }
  }

  static constexpr size_t kMaxEntries = 256;
  std::mutex mu_;
  std::unordered_map<std::string, Entry> map_;
  std::multimap<size_t, void*> free_;
  uint64_t clock_ = 0;
};

TableCache& table_cache() {
  static TableCache* cache = new TableCache();  // leaked on purpose: no CUDA calls at process exit
  return *cache;
}

int32_t dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kF32;
    case at::kBFloat16: return kBF16;
    case at::kHalf: return kF16;
    default: return -1;
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Classic iteration in fp32 (ranks > 256), norm in float64.
std::pair<at::Tensor, at::Tensor> classic_aten(const at::Tensor& x, at::ArrayRef<double> coef, double eps, bool clamp_eps) {
  at::Tensor X = x.to(at::kFloat);
  at::Tensor norm = at::linalg_vector_norm(X, 2, c10::nullopt, false, at::kDouble);
  at::Tensor s = clamp_eps ? norm.clamp_min(eps).reciprocal() : (norm + eps).reciprocal();
  X = X * s.to(at::kFloat);
  for (size_t i = 0; i + 2 < coef.size(); i += 3) {
    at::Tensor A = at::mm(X, X.t());
    at::Tensor B = at::addmm(A, A, A, coef[i + 1], coef[i + 2]);
    X = at::addmm(X, B, X, coef[i], 1.0);
  }
  return {X, at::logical_not(at::isfinite(norm))};
}

std::pair<at::Tensor, at::Tensor> slow_path(const at::Tensor& x, int64_t r, at::ArrayRef<double> coef, double eps,
                                            bool clamp_eps) {
  return r <= kGramMaxRank ? ns::gram_float64(x, coef, eps, clamp_eps) : classic_aten(x, coef, eps, clamp_eps);
}

// Matrices grouped by rank bucket, then one table upload and 3 launches per non-empty bucket.
struct Plan {
  std::array<std::vector<NsMat>, 3> buckets;  // R = 16, 32, 64
  int64_t ws_floats = 0;

  static int slot(int R) { return R == 16 ? 0 : (R == 32 ? 1 : 2); }

  void add(NsMat m) {
    const int R = bucket_rank(m.r);
    const int64_t nchunk = (m.d + chunk_cols(R) - 1) / chunk_cols(R);
    m.nchunk = (int32_t)nchunk;
    m.ws = ws_floats;
    ws_floats += workspace_floats(R, nchunk);
    ws_floats = (ws_floats + 3) / 4 * 4;
    buckets[slot(R)].push_back(m);
  }

  void run(const at::Device& device, at::ArrayRef<double> coefficients, NsLaunch base) {
    size_t n_entries = 0;
    for (auto& b : buckets) {
      int64_t chunk = 0;
      for (auto& m : b) {
        m.chunk_begin = chunk;
        chunk += m.nchunk;
      }
      n_entries += b.size();
    }
    if (n_entries == 0) return;
    std::vector<float> coef(coefficients.begin(), coefficients.end());
    std::string bytes;
    bytes.reserve(n_entries * sizeof(NsMat) + coef.size() * sizeof(float));
    std::array<size_t, 3> offset{};
    for (int s = 0; s < 3; ++s) {
      offset[s] = bytes.size();
      bytes.append(reinterpret_cast<const char*>(buckets[s].data()), buckets[s].size() * sizeof(NsMat));
    }
    const size_t coef_offset = bytes.size();
    bytes.append(reinterpret_cast<const char*>(coef.data()), coef.size() * sizeof(float));
    if (coef.empty()) bytes.append(4, '\0');
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
    const char* table = static_cast<const char*>(table_cache().get(bytes, device.index(), stream));
    at::Tensor ws = at::empty({std::max<int64_t>(ws_floats, 1)}, at::TensorOptions().dtype(at::kFloat).device(device));
    base.coef = reinterpret_cast<const float*>(table + coef_offset);
    base.steps = (int32_t)(coefficients.size() / 3);
    base.ws = ws.data_ptr<float>();
    const int ranks[3] = {16, 32, 64};
    for (int s = 0; s < 3; ++s) {
      if (buckets[s].empty()) continue;
      NsLaunch a = base;
      a.table = reinterpret_cast<const NsMat*>(table + offset[s]);
      a.n_mats = (int32_t)buckets[s].size();
      a.n_chunks = buckets[s].back().chunk_begin + buckets[s].back().nchunk;
      C10_CUDA_CHECK(ns_launch(ranks[s], a, stream));
    }
  }
};

void check_coefficients(at::ArrayRef<double> coefficients) {
  TORCH_CHECK_VALUE(coefficients.size() % 3 == 0, "coefficients must hold 3 values per step, got ", coefficients.size());
}

std::tuple<std::vector<at::Tensor>, at::Tensor> newton_schulz_cuda(at::TensorList mats, at::ArrayRef<double> coefficients,
                                                                    double eps, bool clamp_eps) {
  check_coefficients(coefficients);
  const int64_t n = (int64_t)mats.size();
  TORCH_CHECK_VALUE(n > 0, "newton_schulz: empty matrix list");
  const at::Device device = mats[0].device();
  c10::cuda::CUDAGuard guard(device);
  at::Tensor status = at::zeros({n}, at::TensorOptions().dtype(at::kInt).device(device));
  std::vector<at::Tensor> outs(n), keep;
  Plan plan;
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& m = mats[i];
    TORCH_CHECK_VALUE(m.dim() == 2, "mats[", i, "] must be 2-D, got ", m.sizes());
    TORCH_CHECK_VALUE(m.device() == device, "mats[", i, "] is on ", m.device(), " but mats[0] is on ", device);
    const int32_t dt = dtype_code(m.scalar_type());
    TORCH_CHECK_VALUE(dt >= 0, "mats[", i, "] has dtype ", m.scalar_type(), "; supported: float32, bfloat16, float16");
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
    if (r > kMaxFastRank) {
      auto res = slow_path(tall ? x.t() : x, r, coefficients, eps, clamp_eps);
      out.copy_(tall ? res.first.t() : res.first);
      status.narrow(0, i, 1).copy_(res.second.reshape({1}));
      continue;
    }
    keep.push_back(x);
    const int64_t s_r = tall ? x.stride(1) : x.stride(0), s_d = tall ? x.stride(0) : x.stride(1);
    const int64_t o_r = tall ? out.stride(1) : out.stride(0), o_d = tall ? out.stride(0) : out.stride(1);
    NsMat e{};
    e.src = x.data_ptr();
    e.dst = out.data_ptr();
    e.buf = nullptr;
    e.d = d;
    e.r = (int32_t)r;
    e.dtype = dt;
    const bool kern_tall = s_d != 1;  // then s_r == 1: read X column by column
    e.ld_src = kern_tall ? s_d : s_r;
    e.ld_dst = kern_tall ? o_d : o_r;
    TORCH_INTERNAL_ASSERT(kern_tall ? (s_r == 1 && o_r == 1) : (s_d == 1 && o_d == 1));
    const int64_t es = x.element_size();
    const bool vec = aligned16(e.src) && aligned16(e.dst) && (e.ld_src * es) % 16 == 0 && (e.ld_dst * es) % 16 == 0;
    e.flags = (kern_tall ? kTall : 0) | (vec ? kVec : 0);
    e.lr_ratio = 0.f;
    e.index = (int32_t)i;
    plan.add(e);
  }
  NsLaunch base{};
  base.status = status.data_ptr<int32_t>();
  base.muon = 0;
  base.clamp_eps = clamp_eps ? 1 : 0;
  base.eps = (float)eps;
  plan.run(device, coefficients, base);
  return {outs, status};
}

void muon_update_cuda(at::TensorList params, at::TensorList grads, at::TensorList bufs, double lr,
                      at::ArrayRef<double> lr_ratios, double weight_decay, double momentum, bool nesterov,
                      at::ArrayRef<double> coefficients, double eps) {
  check_coefficients(coefficients);
  const size_t n = params.size();
  TORCH_CHECK_VALUE(grads.size() == n && bufs.size() == n && lr_ratios.size() == n,
                    "muon_update_: params, grads, momentum buffers and lr_ratios must have equal lengths, got ", n, ", ",
                    grads.size(), ", ", bufs.size(), ", ", lr_ratios.size());
  if (n == 0) return;
  const at::Device device = params[0].device();
  c10::cuda::CUDAGuard guard(device);
  const double decay = 1.0 - lr * weight_decay;
  Plan plan;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor &p = params[i], &g = grads[i], &b = bufs[i];
    TORCH_CHECK_VALUE(p.dim() == 2, "params[", i, "] must be 2-D, got ", p.sizes());
    TORCH_CHECK_VALUE(g.sizes() == p.sizes() && b.sizes() == p.sizes(),
                      "params[", i, "], its gradient and momentum buffer differ in shape: ", p.sizes(), ", ", g.sizes(), ", ",
                      b.sizes());
    TORCH_CHECK_VALUE(g.scalar_type() == p.scalar_type() && b.scalar_type() == p.scalar_type(),
                      "params[", i, "], its gradient and momentum buffer must share a dtype");
    TORCH_CHECK_VALUE(p.is_contiguous() && g.is_contiguous() && b.is_contiguous(),
                      "params[", i, "], its gradient and momentum buffer must be contiguous");
    TORCH_CHECK_VALUE(p.device() == device && g.device() == device && b.device() == device,
                      "params[", i, "], its gradient and momentum buffer must be on ", device);
    const int32_t dt = dtype_code(p.scalar_type());
    TORCH_CHECK_VALUE(dt >= 0, "params[", i, "] has dtype ", p.scalar_type(), "; supported: float32, bfloat16, float16");
    const int64_t R = p.size(0), C = p.size(1);
    if (R == 0 || C == 0) continue;
    const bool tall = R > C;
    const int64_t r = tall ? C : R, d = tall ? R : C;
    const double lr_i = lr * lr_ratios[i];
    if (r > kMaxFastRank) {
      at::Tensor bb = b, pp = p;
      bb.lerp_(g, 1.0 - momentum);
      at::Tensor u = nesterov ? g.lerp(bb, momentum) : bb;
      auto res = slow_path(tall ? u.t() : u, r, coefficients, eps, true);
      pp.mul_(decay).add_((tall ? res.first.t() : res.first).to(at::kFloat), -lr_i);  // one rounding, as on the CPU
      continue;
    }
    NsMat e{};
    e.src = g.data_ptr();
    e.dst = p.data_ptr();
    e.buf = b.data_ptr();
    e.d = d;
    e.r = (int32_t)r;
    e.dtype = dt;
    e.ld_src = C;
    e.ld_dst = C;
    const int64_t es = p.element_size();
    const bool vec = aligned16(e.src) && aligned16(e.dst) && aligned16(e.buf) && (C * es) % 16 == 0;
    e.flags = (tall ? kTall : 0) | (vec ? kVec : 0);
    e.lr_ratio = (float)lr_ratios[i];
    e.index = (int32_t)i;
    plan.add(e);
  }
  NsLaunch base{};
  base.status = nullptr;  // NaN/Inf propagate into the parameters, as in torch.optim.Muon
  base.muon = 1;
  base.nesterov = nesterov ? 1 : 0;
  base.clamp_eps = 1;
  base.eps = (float)eps;
  base.momentum = (float)momentum;
  base.lr = (float)lr;
  base.decay = (float)decay;
  plan.run(device, coefficients, base);
}

}  // namespace
}  // namespace ns_cuda
}  // namespace evilbench

TORCH_LIBRARY_IMPL(evilbench, CUDA, m) {
  m.impl("newton_schulz", &evilbench::ns_cuda::newton_schulz_cuda);
  m.impl("muon_update_", &evilbench::ns_cuda::muon_update_cuda);
}
