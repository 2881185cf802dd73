// Fused cross-entropy + KL on CUDA: a block per row. Each thread folds its 16-byte vector
// loads (8 bf16/fp16 or 4 fp32 values) into an online state in fp32 (cekl::accumulate), the
// block merges the states (warp shuffles, then shared memory), thread 0 finishes the row, and
// for the gradient the block reads the row again and writes d(loss)/dz, possibly over the
// logits. Same math as the CPU twin (cekl_math.h); the host side of each op (checks, outputs,
// dtype dispatch) is ops.h.
//
// Where the second read of a row comes from is the single-rank forward's schedule (cekl_math.h:
// cekl::Schedule), chosen per call, as is how many 16-byte packs a thread loads per loop step
// (1, or 2 for more bytes in flight per thread; the same result either way):
//   row         one block per row, as many in flight as fit on the GPU: the second read hits L2
//               only while the rows in flight fit in it (at V = 40000 in bf16 with a reference,
//               ~4 blocks × 132 SMs × 160 KB is more than the L2)
//   persistent  a grid of blocks that loop over the rows, sized so that the rows in flight take
//               at most half of the L2 (or with a given number of blocks per SM)
//   smem        the first read keeps the row (and the reference row) in shared memory, and the
//               gradient pass reads it from there; rows too long for shared memory use `row`
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <climits>
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
__device__ __forceinline__ void to_floats(const Pack<scalar_t>& p, float (&out)[Pack<scalar_t>::kSize]) {
#pragma unroll
  for (int k = 0; k < Pack<scalar_t>::kSize; ++k) out[k] = static_cast<float>(p.v[k]);
}

template <typename scalar_t>
__device__ __forceinline__ const Pack<scalar_t>* as_packs(const scalar_t* base) {
  return reinterpret_cast<const Pack<scalar_t>*>(base);
}

// Where a block keeps its row for the gradient pass (the smem schedule): the row's packs, then
// the reference row's. Null pointers: nothing kept.
template <typename scalar_t>
struct KeptRow {
  Pack<scalar_t>* z;
  Pack<scalar_t>* r;
};

template <typename scalar_t>
__device__ __forceinline__ void store_streaming(scalar_t* base, int64_t pack, const Pack<scalar_t>& p) {
  int4 bits;
  memcpy(&bits, &p, sizeof bits);
  __stcs(reinterpret_cast<int4*>(base) + pack, bits);
}

// This thread's share of the row's statistics (before the block merge). With `keep`, the thread
// also stores the packs it read there: the gradient pass has the same thread read the same packs.
// kStep packs per loop step: with 2, both packs' loads are issued before either is folded in (more
// bytes in flight per thread), folded in the same order as with 1, so the result is the same.
template <typename V, int kStep = 1, typename scalar_t>
__device__ State thread_state(const scalar_t* z, const scalar_t* r, bool vectorised, const Params& p,
                              KeptRow<scalar_t> keep = {nullptr, nullptr}) {
  static_assert(kStep == 1 || kStep == 2, "one or two packs per step");
  constexpr int kVec = Pack<scalar_t>::kSize;
  State s = cekl::empty_state();
  auto fold = [&](int64_t i, const Pack<scalar_t>& zp, const Pack<scalar_t>& rp) {
    float zf[kVec], rf[kVec];
    if (keep.z != nullptr) keep.z[i] = zp;
    to_floats(zp, zf);
    if (r != nullptr) {
      if (keep.r != nullptr) keep.r[i] = rp;
      to_floats(rp, rf);
    } else {
#pragma unroll
      for (int k = 0; k < kVec; ++k) rf[k] = 0.f;
    }
    cekl::accumulate<V>(s, zf, rf, kVec, p);
  };
  int64_t done = 0;
  if (vectorised) {
    const int64_t packs = p.valid_cols / kVec, stride = blockDim.x;
    int64_t i = threadIdx.x;
    if constexpr (kStep == 2) {
      for (; i + stride < packs; i += 2 * stride) {
        const Pack<scalar_t> z0 = as_packs(z)[i], z1 = as_packs(z)[i + stride];
        Pack<scalar_t> r0 = z0, r1 = z1;  // values, not references: nothing here needs an address
        if (r != nullptr) {
          r0 = as_packs(r)[i];
          r1 = as_packs(r)[i + stride];
        }
        fold(i, z0, r0);
        fold(i + stride, z1, r1);
      }
    }
    for (; i < packs; i += stride) {
      const Pack<scalar_t> zp = as_packs(z)[i];
      Pack<scalar_t> rp = zp;
      if (r != nullptr) rp = as_packs(r)[i];
      fold(i, zp, rp);
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

// The gradient of one row. The vectorised part reads its packs from `z_packs` / `r_packs` (the
// row in global memory, or where thread_state kept it), kStep packs per loop step as there; the
// unaligned tail reads z / r.
template <typename V, int kStep = 1, typename scalar_t>
__device__ void row_grad(const scalar_t* z, const scalar_t* r, const Pack<scalar_t>* z_packs,
                         const Pack<scalar_t>* r_packs, scalar_t* out, int64_t target, const Row& fin,
                         const Params& p, float scale, bool vectorised, int64_t cols) {
  static_assert(kStep == 1 || kStep == 2, "one or two packs per step");
  constexpr int kVec = Pack<scalar_t>::kSize;
  constexpr bool kWithRef = V::kMode != cekl::kNone;
  auto write = [&](int64_t i, const Pack<scalar_t>& zp, const Pack<scalar_t>& rp) {
    float zf[kVec], rf[kVec];
    to_floats(zp, zf);
    if (kWithRef) to_floats(rp, rf);
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
  };
  int64_t done = 0;
  if (vectorised) {
    const int64_t packs = p.valid_cols / kVec, stride = blockDim.x;
    int64_t i = threadIdx.x;
    if constexpr (kStep == 2) {
      for (; i + stride < packs; i += 2 * stride) {
        const Pack<scalar_t> z0 = z_packs[i], z1 = z_packs[i + stride];
        Pack<scalar_t> r0 = z0, r1 = z1;
        if constexpr (kWithRef) {
          r0 = r_packs[i];
          r1 = r_packs[i + stride];
        }
        write(i, z0, r0);
        write(i + stride, z1, r1);
      }
    }
    for (; i < packs; i += stride) {
      const Pack<scalar_t> zp = z_packs[i];
      Pack<scalar_t> rp = zp;
      if constexpr (kWithRef) rp = r_packs[i];
      write(i, zp, rp);
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

// Single rank: statistics, finished row and the gradient, for rows blockIdx.x, + gridDim.x, ...
// (one row per block unless the grid is persistent). Batch has no __restrict__ on z / out: they
// may be the same buffer.
template <typename scalar_t, bool kKeepRow, int kStep>
__global__ void __launch_bounds__(kThreads) forward_kernel(cekl::Batch<scalar_t> b, float* __restrict__ rows,
                                                           bool vectorised) {
  __shared__ Row fin;
  extern __shared__ int4 kept_packs[];  // kKeepRow: launched with the bytes the row's packs need
  KeptRow<scalar_t> keep{nullptr, nullptr};
  if (kKeepRow) {
    keep.z = reinterpret_cast<Pack<scalar_t>*>(kept_packs);
    if (b.r != nullptr) keep.r = keep.z + b.p.valid_cols / Pack<scalar_t>::kSize;
  }
  // The barriers inside the loop (block_reduce's, and the one after `fin` is written) also keep
  // one row's reads of `fin` and of the warp states before the next row's writes.
  for (int64_t row = blockIdx.x; row < b.rows; row += gridDim.x) {
    const float scale = b.row_scale[row];
    const int64_t offset = row * b.cols;
    const scalar_t* zr = b.z + offset;
    const scalar_t* rr = b.r != nullptr ? b.r + offset : nullptr;
    scalar_t* outr = b.out + offset;
    if (scale == 0.f) {  // ignored row (uniform over the block): no loss, zero gradient
      zero_row(outr, b.cols);
      continue;
    }
    const int64_t t = b.target[row];
    cekl::dispatch_variant(b.p, [&](auto v) {
      using V = decltype(v);
      State s = block_reduce(thread_state<V, kStep>(zr, rr, vectorised, b.p, keep));
      if (threadIdx.x == 0) {
        s.zt = t >= 0 ? static_cast<float>(zr[t]) : 0.f;
        fin = cekl::finish(s, b.p.mode);
        cekl::store_row(fin, rows + row * cekl::kRowCols);
      }
      __syncthreads();
      const Pack<scalar_t>* z_packs = kKeepRow ? keep.z : as_packs(zr);
      const Pack<scalar_t>* r_packs = kKeepRow ? keep.r : (rr != nullptr ? as_packs(rr) : nullptr);
      row_grad<V, kStep>(zr, rr, z_packs, r_packs, outr, t, fin, b.p, scale, vectorised, b.cols);
    });
  }
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
    const scalar_t* zr = b.z + offset;
    const scalar_t* rr = b.r != nullptr ? b.r + offset : nullptr;
    row_grad<decltype(v)>(zr, rr, as_packs(zr), rr != nullptr ? as_packs(rr) : nullptr, outr, b.target[row], fin,
                          b.p, scale, vectorised, b.cols);
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

// The per-call bookkeeping runs in one block (N is thousands of rows, not millions): a pass to
// count the rows and find the first bad label, a pass to write the targets and row scales.
constexpr int kBookkeepingThreads = 1024;

// Sum (or minimum) over the block, valid in every thread; `partial` holds one value per warp.
template <typename T, typename Op>
__device__ T block_all_reduce(T value, Op op, T* partial) {
  constexpr unsigned kAll = 0xffffffffu;
  for (int offset = 16; offset > 0; offset >>= 1) value = op(value, __shfl_down_sync(kAll, value, offset));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  T total = partial[0];
  for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) total = op(total, partial[w]);
  __syncthreads();  // `partial` may be reused by the next reduction
  return total;
}

template <typename label_t>
__global__ void __launch_bounds__(kBookkeepingThreads)
    prepare_kernel(const label_t* __restrict__ labels, int64_t n, cekl::Labels shard, double grad_scale,
                   int64_t* __restrict__ target, float* __restrict__ row_scale, float* __restrict__ grad_row_scale,
                   int64_t* __restrict__ counts) {
  __shared__ long long partial[kBookkeepingThreads / 32];
  long long counted = 0, first_bad = LLONG_MAX;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t y = labels[i];
    counted += cekl::label_counted(y, shard) ? 1 : 0;
    if (first_bad == LLONG_MAX && cekl::label_bad(y, shard)) first_bad = i;
  }
  counted = block_all_reduce(counted, [](long long a, long long b) { return a + b; }, partial);
  first_bad = block_all_reduce(first_bad, [](long long a, long long b) { return a < b ? a : b; }, partial);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t y = labels[i];
    target[i] = cekl::label_target(y, shard);
    cekl::row_scales(cekl::label_counted(y, shard), counted, grad_scale, row_scale + i, grad_row_scale + i);
  }
  if (threadIdx.x == 0) {
    counts[0] = counted;
    counts[1] = first_bad == LLONG_MAX ? -1 : first_bad;
  }
}

__global__ void __launch_bounds__(kBookkeepingThreads)
    total_kernel(const float* __restrict__ rows, int64_t n, const int64_t* __restrict__ counts, float kl_factor,
                 float* __restrict__ loss, float* __restrict__ ce, float* __restrict__ kl) {
  __shared__ double partial[kBookkeepingThreads / 32];
  double ce_sum = 0.0, kl_sum = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    ce_sum += rows[i * cekl::kRowCols];
    kl_sum += rows[i * cekl::kRowCols + 1];
  }
  auto add = [](double a, double b) { return a + b; };
  ce_sum = block_all_reduce(ce_sum, add, partial);
  kl_sum = block_all_reduce(kl_sum, add, partial);
  if (threadIdx.x == 0) cekl::totals(ce_sum, kl_sum, counts[0], kl_factor, loss, ce, kl);
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

// What the forward's schedules need to know of the current device.
struct DeviceLimits {
  int sms = 0;                 // streaming multiprocessors
  int64_t l2_bytes = 0;        // L2 cache
  int64_t smem_optin = 0;      // dynamic shared memory a block may opt in to
};

DeviceLimits device_limits() {
  int device = 0, sms = 0, l2 = 0, smem = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return DeviceLimits{sms, l2, smem};
}

// Blocks of the persistent grid: the same number on every SM (the rows are shared out evenly):
// `asked` per SM, or (asked == 0) as many as keep the rows in flight within half of the L2; at
// least one and at most what fits on an SM at once; never more than the rows.
template <typename scalar_t, int kStep>
int64_t persistent_blocks(const cekl::Batch<scalar_t>& b, const DeviceLimits& d, int64_t asked) {
  int fits = 0;
  C10_CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fits, forward_kernel<scalar_t, false, kStep>, kThreads, 0));
  const int64_t row_bytes = b.cols * static_cast<int64_t>(sizeof(scalar_t)) * (b.r != nullptr ? 2 : 1);
  const int64_t rows_in_l2 = d.l2_bytes / 2 / std::max<int64_t>(row_bytes, 1);
  const int64_t wanted = asked > 0 ? asked : rows_in_l2 / std::max(d.sms, 1);
  const int64_t per_sm = std::clamp<int64_t>(wanted, 1, std::max(fits, 1));
  return std::min<int64_t>(per_sm * d.sms, b.rows);
}

// Dynamic shared memory the smem kernel may use on this device: the opt-in limit less its static
// shared memory.
template <typename scalar_t, int kStep>
int64_t kept_row_room(const DeviceLimits& d) {
  cudaFuncAttributes attrs{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attrs, forward_kernel<scalar_t, true, kStep>));
  return d.smem_optin - static_cast<int64_t>(attrs.sharedSizeBytes);
}

// Dynamic shared memory the smem schedule needs for a row (and its reference row), or 0 when
// the row does not fit in `room` (or is not vectorised: the kept copy is in packs).
template <typename scalar_t>
size_t kept_row_bytes(const cekl::Batch<scalar_t>& b, bool vectorised, int64_t room) {
  if (!vectorised) return 0;
  const int64_t packs = b.p.valid_cols / Pack<scalar_t>::kSize;
  const int64_t bytes = packs * static_cast<int64_t>(sizeof(Pack<scalar_t>)) * (b.r != nullptr ? 2 : 1);
  return bytes > 0 && bytes <= room ? static_cast<size_t>(bytes) : 0;
}

template <typename scalar_t, int kStep>
void launch_forward(const cekl::Batch<scalar_t>& b, float* rows, const cekl::Schedule& schedule) {
  const bool vectorised = can_vectorise(b);
  if (schedule.kind == cekl::kPersistent) {
    const auto blocks =
        static_cast<unsigned>(persistent_blocks<scalar_t, kStep>(b, device_limits(), schedule.blocks_per_sm));
    forward_kernel<scalar_t, false, kStep><<<blocks, kThreads, 0, stream()>>>(b, rows, vectorised);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  if (schedule.kind == cekl::kSharedRow) {
    const int64_t room = kept_row_room<scalar_t, kStep>(device_limits());
    const size_t bytes = kept_row_bytes(b, vectorised, room);
    if (bytes > 0) {
      // The limit is per kernel and device, shared by every host thread: always the whole room
      // (the same value each time), never this row's size, which another thread's launch could undercut.
      C10_CUDA_CHECK(cudaFuncSetAttribute(forward_kernel<scalar_t, true, kStep>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(room)));
      forward_kernel<scalar_t, true, kStep><<<b.rows, kThreads, bytes, stream()>>>(b, rows, vectorised);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
  }
  forward_kernel<scalar_t, false, kStep><<<b.rows, kThreads, 0, stream()>>>(b, rows, vectorised);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

constexpr int kElementwiseThreads = 256;

unsigned elementwise_blocks(int64_t n) {
  return static_cast<unsigned>((n + kElementwiseThreads - 1) / kElementwiseThreads);
}

// One block per row for the row kernels, one thread per row for the per-row steps.
struct CudaKernels {
  template <typename scalar_t>
  static void forward(const cekl::Batch<scalar_t>& b, float* rows, const cekl::Schedule& schedule) {
    if (schedule.packs_per_step == 2) {
      launch_forward<scalar_t, 2>(b, rows, schedule);
    } else {
      launch_forward<scalar_t, 1>(b, rows, schedule);
    }
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

  template <typename label_t>
  static void prepare(const label_t* labels, int64_t n, const cekl::Labels& shard, double grad_scale,
                      int64_t* target, float* row_scale, float* grad_row_scale, int64_t* counts) {
    prepare_kernel<label_t><<<1, kBookkeepingThreads, 0, stream()>>>(labels, n, shard, grad_scale, target, row_scale,
                                                                      grad_row_scale, counts);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  static void total(const float* rows, int64_t n, const int64_t* counts, float kl_factor, float* loss, float* ce,
                    float* kl) {
    total_kernel<<<1, kBookkeepingThreads, 0, stream()>>>(rows, n, counts, kl_factor, loss, ce, kl);
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
