// Fused cross-entropy + KL on CUDA: one block per row. Each thread folds its 16-byte vector
// loads (8 bf16/fp16 or 4 fp32 values) into an online state in fp32 (cekl::accumulate), the
// block merges the states (warp shuffles, then shared memory), thread 0 finishes the row, and
// for the gradient the block reads the row again (from L2 right after the first read) and
// writes d(loss)/dz, possibly over the logits. Same math as the CPU twin (cekl_math.h); the
// host side of each op (checks, outputs, dtype dispatch) is ops.h.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

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

template <typename scalar_t>
__device__ __forceinline__ void store_streaming(scalar_t* base, int64_t pack, const Pack<scalar_t>& p) {
  int4 bits;
  memcpy(&bits, &p, sizeof bits);
  __stcs(reinterpret_cast<int4*>(base) + pack, bits);
}

// This thread's share of the row's statistics (before the block merge).
template <typename V, typename scalar_t>
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
      cekl::accumulate<V>(s, zf, rf, kVec, p);
    }
    done = packs * kVec;
  }
  for (int64_t c = done + threadIdx.x; c < p.valid_cols; c += blockDim.x) {
    const float zf = static_cast<float>(z[c]);
    const float rf = r != nullptr ? static_cast<float>(r[c]) : 0.f;
    cekl::accumulate<V>(s, &zf, &rf, 1, p);
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

template <typename V, typename scalar_t>
__device__ void row_grad(const scalar_t* z, const scalar_t* r, scalar_t* out, int64_t target, const Row& fin,
                         const Params& p, float scale, bool vectorised, int64_t cols) {
  constexpr int kVec = Pack<scalar_t>::kSize;
  constexpr bool kWithRef = V::kMode != cekl::kNone;
  int64_t done = 0;
  if (vectorised) {
    const int64_t packs = p.valid_cols / kVec;
    for (int64_t i = threadIdx.x; i < packs; i += blockDim.x) {
      float zf[kVec], rf[kVec];
      load_floats(z, i, zf);
      if (kWithRef) load_floats(r, i, rf);
      Pack<scalar_t> g;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const int64_t col = i * kVec + k;
        const float rv = kWithRef ? rf[k] : 0.f;
        g.v[k] = static_cast<scalar_t>(scale * cekl::grad_element<V>(zf[k], rv, col == target, fin, p));
      }
      // Written after this thread's own reads of the same columns: safe when out == z. A
      // streaming store: the gradient is not read again by this kernel, so keep L2 for the rows.
      store_streaming(out, i, g);
    }
    done = packs * kVec;
  }
  for (int64_t c = done + threadIdx.x; c < p.valid_cols; c += blockDim.x) {
    const float rv = kWithRef ? static_cast<float>(r[c]) : 0.f;
    out[c] = static_cast<scalar_t>(scale * cekl::grad_element<V>(static_cast<float>(z[c]), rv, c == target, fin, p));
  }
  for (int64_t c = p.valid_cols + threadIdx.x; c < cols; c += blockDim.x) out[c] = static_cast<scalar_t>(0.f);
}

template <typename scalar_t>
__device__ void zero_row(scalar_t* out, int64_t cols) {
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) out[c] = static_cast<scalar_t>(0.f);
}

// Single rank: statistics, finished row and the gradient. Batch has no __restrict__ on z / out:
// they may be the same buffer.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) forward_kernel(cekl::Batch<scalar_t> b, float* __restrict__ rows,
                                                           bool vectorised) {
  const int64_t row = blockIdx.x;
  const float scale = b.row_scale[row];
  const int64_t offset = row * b.cols;
  const scalar_t* zr = b.z + offset;
  const scalar_t* rr = b.r != nullptr ? b.r + offset : nullptr;
  scalar_t* outr = b.out + offset;
  if (scale == 0.f) {  // ignored row (uniform over the block): no loss, zero gradient
    zero_row(outr, b.cols);
    return;
  }
  __shared__ Row fin;
  const int64_t t = b.target[row];
  cekl::dispatch_variant(b.p, [&](auto v) {
    using V = decltype(v);
    State s = block_reduce(thread_state<V>(zr, rr, vectorised, b.p));
    if (threadIdx.x == 0) {
      s.zt = t >= 0 ? static_cast<float>(zr[t]) : 0.f;
      fin = cekl::finish(s, b.p.mode);
      cekl::store_row(fin, rows + row * cekl::kRowCols);
    }
    __syncthreads();
    row_grad<V>(zr, rr, outr, t, fin, b.p, scale, vectorised, b.cols);
  });
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) stats_kernel(cekl::Batch<scalar_t> b, float* __restrict__ stats,
                                                         bool vectorised) {
  const int64_t row = blockIdx.x;
  const int64_t offset = row * b.cols;
  const scalar_t* zr = b.z + offset;
  const bool counted = b.row_scale[row] != 0.f;
  State s = cekl::empty_state();
  if (counted) {
    cekl::dispatch_variant(b.p, [&](auto v) {
      s = block_reduce(thread_state<decltype(v)>(zr, b.r != nullptr ? b.r + offset : nullptr, vectorised, b.p));
    });
  }
  if (threadIdx.x == 0) {
    const int64_t t = b.target[row];
    s.zt = (counted && t >= 0) ? static_cast<float>(zr[t]) : 0.f;
    cekl::store_stats(s, stats + row * cekl::kStatCols);
  }
}

__global__ void rescale_kernel(const float* __restrict__ stats, const float* __restrict__ maxima,
                               float* __restrict__ sums, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) cekl::rescale_row(stats, maxima, sums, i);
}

__global__ void finish_kernel(const float* __restrict__ maxima, const float* __restrict__ sums,
                              const float* __restrict__ row_scale, int mode, float* __restrict__ rows, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) cekl::finish_row(maxima, sums, row_scale, mode, rows, i);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) backward_kernel(cekl::Batch<scalar_t> b, const float* __restrict__ rows,
                                                            bool vectorised) {
  const int64_t row = blockIdx.x;
  const float scale = b.row_scale[row];
  const int64_t offset = row * b.cols;
  scalar_t* outr = b.out + offset;
  if (scale == 0.f) {
    zero_row(outr, b.cols);
    return;
  }
  const Row fin = cekl::load_row(rows + row * cekl::kRowCols);
  cekl::dispatch_variant(b.p, [&](auto v) {
    row_grad<decltype(v)>(b.z + offset, b.r != nullptr ? b.r + offset : nullptr, outr, b.target[row], fin, b.p,
                          scale, vectorised, b.cols);
  });
}

// grad *= *factor, unless *factor == 1: decided here, so the host never waits for the factor.
template <typename scalar_t>
__global__ void scale_grad_kernel(scalar_t* __restrict__ grad, const float* __restrict__ factor, int64_t n) {
  const float f = *factor;
  if (f == 1.f) return;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    grad[i] = static_cast<scalar_t>(static_cast<float>(grad[i]) * f);
  }
}

// 16-byte vector loads need every row start (and hence the base pointers) 16-byte aligned.
template <typename scalar_t>
bool can_vectorise(const cekl::Batch<scalar_t>& b) {
  auto aligned = [](const void* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0; };
  const int64_t row_bytes = b.cols * static_cast<int64_t>(sizeof(scalar_t));
  return row_bytes % 16 == 0 && aligned(b.z) && (b.r == nullptr || aligned(b.r)) &&
         (b.out == nullptr || aligned(b.out));
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

constexpr int kElementwiseThreads = 256;

unsigned elementwise_blocks(int64_t n) {
  return static_cast<unsigned>((n + kElementwiseThreads - 1) / kElementwiseThreads);
}

// One block per row for the row kernels, one thread per row for the per-row steps.
struct CudaKernels {
  template <typename scalar_t>
  static void forward(const cekl::Batch<scalar_t>& b, float* rows) {
    forward_kernel<scalar_t><<<b.rows, kThreads, 0, stream()>>>(b, rows, can_vectorise(b));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename scalar_t>
  static void stats(const cekl::Batch<scalar_t>& b, float* stats) {
    stats_kernel<scalar_t><<<b.rows, kThreads, 0, stream()>>>(b, stats, can_vectorise(b));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  static void rescale(const float* stats, const float* maxima, float* sums, int64_t n) {
    rescale_kernel<<<elementwise_blocks(n), kElementwiseThreads, 0, stream()>>>(stats, maxima, sums, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  static void finish(const float* maxima, const float* sums, const float* row_scale, int mode, float* rows,
                     int64_t n) {
    finish_kernel<<<elementwise_blocks(n), kElementwiseThreads, 0, stream()>>>(maxima, sums, row_scale, mode, rows,
                                                                                n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename scalar_t>
  static void backward(const cekl::Batch<scalar_t>& b, const float* rows) {
    backward_kernel<scalar_t><<<b.rows, kThreads, 0, stream()>>>(b, rows, can_vectorise(b));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename scalar_t>
  static void scale_grad(scalar_t* grad, const float* factor, int64_t n) {
    // A bounded grid-stride launch: when the factor is 1 every block returns at once.
    constexpr int64_t kMaxBlocks = 4096;
    const auto blocks = static_cast<unsigned>(std::min<int64_t>(elementwise_blocks(n), kMaxBlocks));
    scale_grad_kernel<scalar_t><<<blocks, kElementwiseThreads, 0, stream()>>>(grad, factor, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(vikhr, CUDA, m) { register_cekl_kernels<CudaKernels>(m); }

}  // namespace vikhr
