// Fused cross-entropy + KL on CUDA: one block per row. Each thread folds its 16-byte vector
// loads (8 bf16/fp16 or 4 fp32 values) into an online state in fp32 (cekl::accumulate), the
// block merges the states (warp shuffles, then shared memory), thread 0 finishes the row, and
// for the gradient the block reads the row again (from L2 right after the first read) and
// writes d(loss)/dz, possibly over the logits. Same math as the CPU twin (cekl_math.h).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>

#include "cekl_math.h"
#include "ops.h"

namespace vikhr {

namespace {

using cekl::Params;
using cekl::Row;
using cekl::State;

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

template <typename scalar_t>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(scalar_t);
  scalar_t v[kSize];
};

template <typename scalar_t>
__device__ __forceinline__ void load_floats(const scalar_t* base, int64_t pack, float (&out)[Pack<scalar_t>::kSize]) {
  const Pack<scalar_t> p = reinterpret_cast<const Pack<scalar_t>*>(base)[pack];
#pragma unroll
  for (int k = 0; k < Pack<scalar_t>::kSize; ++k) out[k] = static_cast<float>(p.v[k]);
}

// This thread's share of the row's statistics (before the block merge).
template <typename scalar_t>
__device__ State thread_state(const scalar_t* z, const scalar_t* r, bool vectorised, const Params& p) {
  constexpr int kVec = Pack<scalar_t>::kSize;
  State s = cekl::empty_state();
  int64_t done = 0;
  if (vectorised) {
    const int64_t packs = p.valid_cols / kVec;
    for (int64_t i = threadIdx.x; i < packs; i += blockDim.x) {
      float zf[kVec], rf[kVec];
      load_floats(z, i, zf);
      if (r != nullptr) {
        load_floats(r, i, rf);
      } else {
#pragma unroll
        for (int k = 0; k < kVec; ++k) rf[k] = 0.f;
      }
      cekl::accumulate(s, zf, rf, kVec, p);
    }
    done = packs * kVec;
  }
  for (int64_t c = done + threadIdx.x; c < p.valid_cols; c += blockDim.x) {
    const float zf = static_cast<float>(z[c]);
    const float rf = r != nullptr ? static_cast<float>(r[c]) : 0.f;
    cekl::accumulate(s, &zf, &rf, 1, p);
  }
  return s;
}

__device__ __forceinline__ State shfl_down(const State& s, int offset) {
  constexpr unsigned kAll = 0xffffffffu;
  return State{__shfl_down_sync(kAll, s.mz, offset), __shfl_down_sync(kAll, s.sz, offset),
               __shfl_down_sync(kAll, s.zt, offset), __shfl_down_sync(kAll, s.mx, offset),
               __shfl_down_sync(kAll, s.sx, offset), __shfl_down_sync(kAll, s.my, offset),
               __shfl_down_sync(kAll, s.sy, offset), __shfl_down_sync(kAll, s.w, offset)};
}

// Merged state of the whole block, valid in thread 0.
__device__ State block_reduce(State s) {
  __shared__ State warp_states[kWarps];
  for (int offset = 16; offset > 0; offset >>= 1) cekl::merge_into(s, shfl_down(s, offset));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_states[warp] = s;
  __syncthreads();
  if (warp == 0) {
    s = lane < kWarps ? warp_states[lane] : cekl::empty_state();
    for (int offset = 16; offset > 0; offset >>= 1) cekl::merge_into(s, shfl_down(s, offset));
  }
  return s;
}

template <typename scalar_t, int Mode, bool Unit>
__device__ void row_grad_impl(const scalar_t* z, const scalar_t* r, scalar_t* out, int64_t target, const Row& fin,
                              const Params& p, float scale, bool vectorised, int64_t cols) {
  constexpr int kVec = Pack<scalar_t>::kSize;
  int64_t done = 0;
  if (vectorised) {
    const int64_t packs = p.valid_cols / kVec;
    for (int64_t i = threadIdx.x; i < packs; i += blockDim.x) {
      float zf[kVec], rf[kVec];
      load_floats(z, i, zf);
      if (Mode != cekl::kNone) load_floats(r, i, rf);
      Pack<scalar_t> g;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const int64_t col = i * kVec + k;
        const float rv = Mode != cekl::kNone ? rf[k] : 0.f;
        g.v[k] = static_cast<scalar_t>(scale * cekl::grad_element<Mode, Unit>(zf[k], rv, col == target, fin, p));
      }
      // Written after this thread's own reads of the same columns: safe when out == z.
      reinterpret_cast<Pack<scalar_t>*>(out)[i] = g;
    }
    done = packs * kVec;
  }
  for (int64_t c = done + threadIdx.x; c < p.valid_cols; c += blockDim.x) {
    const float rv = Mode != cekl::kNone ? static_cast<float>(r[c]) : 0.f;
    out[c] = static_cast<scalar_t>(scale * cekl::grad_element<Mode, Unit>(static_cast<float>(z[c]), rv, c == target,
                                                                          fin, p));
  }
  for (int64_t c = p.valid_cols + threadIdx.x; c < cols; c += blockDim.x) out[c] = static_cast<scalar_t>(0.f);
}

template <typename scalar_t>
__device__ void row_grad(const scalar_t* z, const scalar_t* r, scalar_t* out, int64_t target, const Row& fin,
                         const Params& p, float scale, bool vectorised, int64_t cols) {
  const bool unit = p.inv_temperature == 1.f;
  if (p.mode == cekl::kNone) {
    row_grad_impl<scalar_t, cekl::kNone, true>(z, r, out, target, fin, p, scale, vectorised, cols);
  } else if (p.mode == cekl::kReverse) {
    if (unit) {
      row_grad_impl<scalar_t, cekl::kReverse, true>(z, r, out, target, fin, p, scale, vectorised, cols);
    } else {
      row_grad_impl<scalar_t, cekl::kReverse, false>(z, r, out, target, fin, p, scale, vectorised, cols);
    }
  } else {
    if (unit) {
      row_grad_impl<scalar_t, cekl::kForward, true>(z, r, out, target, fin, p, scale, vectorised, cols);
    } else {
      row_grad_impl<scalar_t, cekl::kForward, false>(z, r, out, target, fin, p, scale, vectorised, cols);
    }
  }
}

template <typename scalar_t>
__device__ void zero_row(scalar_t* out, int64_t cols) {
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) out[c] = static_cast<scalar_t>(0.f);
}

__device__ __forceinline__ void store_row(float* dst, const Row& row) {
  dst[0] = row.ce;
  dst[1] = row.kl;
  dst[2] = row.lse_z;
  dst[3] = row.lse_a;
  dst[4] = row.lse_b;
}

// Single rank: statistics, finished row and (out != nullptr) the gradient. No __restrict__ on
// z / out: they may be the same buffer.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const scalar_t* z, const scalar_t* r, scalar_t* out, const int64_t* __restrict__ target,
                   const float* __restrict__ row_scale, float* __restrict__ rows, int64_t cols, Params p,
                   bool vectorised) {
  const int64_t row = blockIdx.x;
  const float scale = row_scale[row];
  const scalar_t* zr = z + row * cols;
  const scalar_t* rr = r != nullptr ? r + row * cols : nullptr;
  scalar_t* outr = out != nullptr ? out + row * cols : nullptr;
  if (scale == 0.f) {  // ignored row (uniform over the block): no loss, zero gradient
    if (outr != nullptr) zero_row(outr, cols);
    return;
  }
  __shared__ Row fin;
  State s = block_reduce(thread_state(zr, rr, vectorised, p));
  const int64_t t = target[row];
  if (threadIdx.x == 0) {
    s.zt = t >= 0 ? static_cast<float>(zr[t]) : 0.f;
    fin = cekl::finish(s, p.mode);
    store_row(rows + row * cekl::kRowCols, fin);
  }
  __syncthreads();
  if (outr != nullptr) row_grad(zr, rr, outr, t, fin, p, scale, vectorised, cols);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    stats_kernel(const scalar_t* __restrict__ z, const scalar_t* __restrict__ r, const int64_t* __restrict__ target,
                 const float* __restrict__ row_scale, float* __restrict__ stats, int64_t cols, Params p,
                 bool vectorised) {
  const int64_t row = blockIdx.x;
  const scalar_t* zr = z + row * cols;
  State s = cekl::empty_state();
  if (row_scale[row] != 0.f) s = block_reduce(thread_state(zr, r != nullptr ? r + row * cols : nullptr, vectorised, p));
  if (threadIdx.x == 0) {
    const int64_t t = target[row];
    s.zt = (row_scale[row] != 0.f && t >= 0) ? static_cast<float>(zr[t]) : 0.f;
    float* o = stats + row * cekl::kStatCols;
    // maxima first (MAX-reduced), then the sums (SUM-reduced); see ops.h
    o[0] = s.mz;
    o[1] = s.mx;
    o[2] = s.my;
    o[3] = s.sz;
    o[4] = s.zt;
    o[5] = s.sx;
    o[6] = s.sy;
    o[7] = s.w;
  }
}

__global__ void rescale_kernel(const float* __restrict__ stats, const float* __restrict__ maxima,
                               float* __restrict__ sums, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float* s = stats + i * cekl::kStatCols;
  State state{s[0], s[3], s[4], s[1], s[5], s[2], s[6], s[7]};
  const float* m = maxima + i * cekl::kMaxCols;
  cekl::rescale_to(state, m[0], m[1], m[2]);
  float* o = sums + i * cekl::kSumCols;
  o[0] = state.sz;
  o[1] = state.zt;
  o[2] = state.sx;
  o[3] = state.sy;
  o[4] = state.w;
}

__global__ void finish_kernel(const float* __restrict__ maxima, const float* __restrict__ sums,
                              const float* __restrict__ row_scale, float* __restrict__ rows, int64_t n, int mode) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n || row_scale[i] == 0.f) return;
  const float* m = maxima + i * cekl::kMaxCols;
  const float* s = sums + i * cekl::kSumCols;
  const State state{m[0], s[0], s[1], m[1], s[2], m[2], s[3], s[4]};
  store_row(rows + i * cekl::kRowCols, cekl::finish(state, mode));
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const scalar_t* z, const scalar_t* r, scalar_t* out, const int64_t* __restrict__ target,
                    const float* __restrict__ row_scale, const float* __restrict__ rows, int64_t cols, Params p,
                    bool vectorised) {
  const int64_t row = blockIdx.x;
  const float scale = row_scale[row];
  scalar_t* outr = out + row * cols;
  if (scale == 0.f) {
    zero_row(outr, cols);
    return;
  }
  const float* f = rows + row * cekl::kRowCols;
  const Row fin{f[0], f[1], f[2], f[3], f[4]};
  row_grad(z + row * cols, r != nullptr ? r + row * cols : nullptr, outr, target[row], fin, p, scale, vectorised,
           cols);
}

// 16-byte vector loads need every row start (and hence the base pointers) 16-byte aligned.
bool can_vectorise(const torch::Tensor& z, const std::optional<torch::Tensor>& r,
                   const std::optional<torch::Tensor>& out) {
  auto aligned = [](const torch::Tensor& t) { return reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 16 == 0; };
  const int64_t row_bytes = z.size(1) * static_cast<int64_t>(z.element_size());
  return row_bytes % 16 == 0 && aligned(z) && (!r || aligned(*r)) && (!out || aligned(*out));
}

template <typename scalar_t>
const scalar_t* opt_ptr(const std::optional<torch::Tensor>& t) {
  return t ? t->data_ptr<scalar_t>() : nullptr;
}

}  // namespace

torch::Tensor cekl_forward_cuda(const torch::Tensor& logits, const std::optional<torch::Tensor>& ref_logits,
                                const torch::Tensor& target, const torch::Tensor& row_scale, double inv_temperature,
                                double kl_coef, int64_t mode, int64_t valid_cols,
                                const std::optional<torch::Tensor>& grad_out) {
  cekl_check_inputs(logits, ref_logits, target, row_scale, mode, valid_cols, grad_out, torch::kCUDA);
  const c10::cuda::CUDAGuard guard(logits.device());
  const Params p{static_cast<float>(inv_temperature), static_cast<float>(kl_coef), static_cast<int>(mode), valid_cols};
  const auto r = mode != cekl::kNone ? ref_logits : std::nullopt;
  auto rows = torch::zeros({logits.size(0), cekl::kRowCols}, logits.options().dtype(torch::kFloat32));
  if (logits.size(0) == 0) return rows;
  const bool vec = can_vectorise(logits, r, grad_out);
  cekl_dispatch(logits.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    forward_kernel<scalar_t><<<logits.size(0), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        logits.data_ptr<scalar_t>(), opt_ptr<scalar_t>(r), grad_out ? grad_out->data_ptr<scalar_t>() : nullptr,
        target.data_ptr<int64_t>(), row_scale.data_ptr<float>(), rows.data_ptr<float>(), logits.size(1), p, vec);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return rows;
}

torch::Tensor cekl_stats_cuda(const torch::Tensor& logits, const std::optional<torch::Tensor>& ref_logits,
                              const torch::Tensor& target, const torch::Tensor& row_scale, double inv_temperature,
                              int64_t mode, int64_t valid_cols) {
  cekl_check_inputs(logits, ref_logits, target, row_scale, mode, valid_cols, std::nullopt, torch::kCUDA);
  const c10::cuda::CUDAGuard guard(logits.device());
  const Params p{static_cast<float>(inv_temperature), 0.f, static_cast<int>(mode), valid_cols};
  const auto r = mode != cekl::kNone ? ref_logits : std::nullopt;
  auto stats = torch::empty({logits.size(0), cekl::kStatCols}, logits.options().dtype(torch::kFloat32));
  if (logits.size(0) == 0) return stats;
  const bool vec = can_vectorise(logits, r, std::nullopt);
  cekl_dispatch(logits.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    stats_kernel<scalar_t><<<logits.size(0), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        logits.data_ptr<scalar_t>(), opt_ptr<scalar_t>(r), target.data_ptr<int64_t>(), row_scale.data_ptr<float>(),
        stats.data_ptr<float>(), logits.size(1), p, vec);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return stats;
}

torch::Tensor cekl_rescale_cuda(const torch::Tensor& stats, const torch::Tensor& maxima) {
  cekl_check_row_tensor(stats, cekl::kStatCols, "stats", torch::kCUDA);
  cekl_check_row_tensor(maxima, cekl::kMaxCols, "maxima", torch::kCUDA);
  TORCH_CHECK(stats.size(0) == maxima.size(0), "cross_entropy_kl: stats and maxima row counts differ");
  const c10::cuda::CUDAGuard guard(stats.device());
  auto sums = torch::empty({stats.size(0), cekl::kSumCols}, stats.options());
  const int64_t n = stats.size(0);
  if (n == 0) return sums;
  rescale_kernel<<<(n + 255) / 256, 256, 0, at::cuda::getCurrentCUDAStream()>>>(
      stats.data_ptr<float>(), maxima.data_ptr<float>(), sums.data_ptr<float>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return sums;
}

torch::Tensor cekl_finish_cuda(const torch::Tensor& maxima, const torch::Tensor& sums, const torch::Tensor& row_scale,
                               int64_t mode) {
  cekl_check_row_tensor(maxima, cekl::kMaxCols, "maxima", torch::kCUDA);
  cekl_check_row_tensor(sums, cekl::kSumCols, "sums", torch::kCUDA);
  TORCH_CHECK(maxima.size(0) == sums.size(0) && row_scale.numel() == sums.size(0),
              "cross_entropy_kl: row counts of maxima, sums and row_scale differ");
  const c10::cuda::CUDAGuard guard(sums.device());
  auto rows = torch::zeros({sums.size(0), cekl::kRowCols}, sums.options());
  const int64_t n = sums.size(0);
  if (n == 0) return rows;
  finish_kernel<<<(n + 255) / 256, 256, 0, at::cuda::getCurrentCUDAStream()>>>(
      maxima.data_ptr<float>(), sums.data_ptr<float>(), row_scale.data_ptr<float>(), rows.data_ptr<float>(), n,
      static_cast<int>(mode));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return rows;
}

void cekl_backward_cuda(const torch::Tensor& logits, const std::optional<torch::Tensor>& ref_logits,
                        const torch::Tensor& target, const torch::Tensor& row_scale, const torch::Tensor& rows,
                        double inv_temperature, double kl_coef, int64_t mode, int64_t valid_cols,
                        const torch::Tensor& grad_out) {
  cekl_check_inputs(logits, ref_logits, target, row_scale, mode, valid_cols, grad_out, torch::kCUDA);
  cekl_check_row_tensor(rows, cekl::kRowCols, "rows", torch::kCUDA);
  TORCH_CHECK(rows.size(0) == logits.size(0), "cross_entropy_kl: rows has ", rows.size(0), " rows, logits ",
              logits.size(0));
  const c10::cuda::CUDAGuard guard(logits.device());
  if (logits.size(0) == 0) return;
  const Params p{static_cast<float>(inv_temperature), static_cast<float>(kl_coef), static_cast<int>(mode), valid_cols};
  const auto r = mode != cekl::kNone ? ref_logits : std::nullopt;
  const bool vec = can_vectorise(logits, r, grad_out);
  cekl_dispatch(logits.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    backward_kernel<scalar_t><<<logits.size(0), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        logits.data_ptr<scalar_t>(), opt_ptr<scalar_t>(r), grad_out.data_ptr<scalar_t>(), target.data_ptr<int64_t>(),
        row_scale.data_ptr<float>(), rows.data_ptr<float>(), logits.size(1), p, vec);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace vikhr
