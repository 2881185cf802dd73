// Fused cross-entropy + KL on the CPU: rows in parallel (at::parallel_for), each row read in
// chunks that are converted to fp32 in L1-sized buffers and reduced by vectorisable loops.
// The single-rank forward reads a row once for its statistics and a second time while it is
// still in cache to write the gradient (optionally over the logits).
// The math is in cekl_math.h; the CUDA twin is cross_entropy_kl_cuda.cu.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "cekl_math.h"
#include "ops.h"

namespace vikhr {

namespace {

using cekl::Params;
using cekl::Row;
using cekl::State;

constexpr int64_t kChunk = 512;

// Function multi-versioning: the hot loops are compiled for AVX-512, AVX2+FMA and baseline
// x86-64 and picked at load time, so the cached build stays portable across machines.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define VIKHR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VIKHR_CLONES
#endif

// Statistics of one chunk folded into the row's running state, per ISA.
VIKHR_CLONES void chunk_stats(State& s, const float* z, const float* r, int64_t n, const Params& p) {
  cekl::dispatch_variant(p, [&](auto v) __attribute__((always_inline)) {
    cekl::accumulate<decltype(v)>(s, z, r, n, p);
  });
}

// Gradient of one chunk; `target` is the label's index within the chunk (outside [0, n): none).
VIKHR_CLONES void chunk_grad(const float* z, const float* r, float* g, int64_t n, int64_t target, const Row& row,
                             const Params& p, float scale) {
  cekl::dispatch_variant(p, [&](auto v) __attribute__((always_inline)) {
    using V = decltype(v);
    const float* rv = V::kMode == cekl::kNone ? z : r;  // never read without KL
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) g[i] = scale * cekl::grad_element<V>(z[i], rv[i], false, row, p);
  });
  // The −onehot term outside the loop: a compare against the loop index blocks vectorisation.
  if (target >= 0 && target < n) g[target] -= scale;
}

// bf16 <-> fp32 by bit manipulation, per ISA: c10::BFloat16's own conversion has a NaN branch
// that keeps GCC from vectorising the store loop.
VIKHR_CLONES void bf16_to_float(const uint16_t* src, float* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bits = static_cast<uint32_t>(src[i]) << 16;
    std::memcpy(dst + i, &bits, sizeof(float));
  }
}

VIKHR_CLONES void float_to_bf16(const float* src, uint16_t* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, src + i, sizeof(float));
    // Round to nearest even, as c10::BFloat16 does; NaN stays a quiet NaN.
    const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    dst[i] = src[i] != src[i] ? static_cast<uint16_t>(0x7FC0) : static_cast<uint16_t>(rounded);
  }
}

template <typename scalar_t>
void to_float(const scalar_t* src, float* dst, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    std::memcpy(dst, src, n * sizeof(float));
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    bf16_to_float(reinterpret_cast<const uint16_t*>(src), dst, n);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
  }
}

template <typename scalar_t>
void from_float(const float* src, scalar_t* dst, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    std::memcpy(dst, src, n * sizeof(float));
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    float_to_bf16(src, reinterpret_cast<uint16_t*>(dst), n);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
  }
}

// The pointers of one row of a batch; `out` may alias `z` (gradient written over the logits).
template <typename scalar_t>
struct RowPtrs {
  const scalar_t* z;
  const scalar_t* r;  // nullptr without KL
  scalar_t* out;      // nullptr when only statistics are wanted
  int64_t target;     // local column of the label, or −1
  float scale;        // 1/N_valid, or 0 for an ignored row
};

template <typename scalar_t>
State row_state(const RowPtrs<scalar_t>& row, const Params& p) {
  alignas(64) float zb[kChunk], rb[kChunk];
  State s = cekl::empty_state();
  for (int64_t c0 = 0; c0 < p.valid_cols; c0 += kChunk) {
    const int64_t n = std::min(kChunk, p.valid_cols - c0);
    to_float(row.z + c0, zb, n);
    if (row.r != nullptr) to_float(row.r + c0, rb, n);
    chunk_stats(s, zb, rb, n, p);
  }
  s.zt = row.target >= 0 ? static_cast<float>(row.z[row.target]) : 0.f;
  return s;
}

template <typename scalar_t>
void row_grad(const RowPtrs<scalar_t>& row, const Row& fin, const Params& p, int64_t cols) {
  alignas(64) float zb[kChunk], rb[kChunk], gb[kChunk];
  for (int64_t c0 = 0; c0 < p.valid_cols; c0 += kChunk) {
    const int64_t n = std::min(kChunk, p.valid_cols - c0);
    to_float(row.z + c0, zb, n);
    if (row.r != nullptr) to_float(row.r + c0, rb, n);
    chunk_grad(zb, row.r != nullptr ? rb : nullptr, gb, n, row.target - c0, fin, p, row.scale);
    from_float(gb, row.out + c0, n);
  }
  std::fill(row.out + p.valid_cols, row.out + cols, static_cast<scalar_t>(0.f));
}

// Runs `fn(RowPtrs, row_index)` over the rows of a batch in parallel.
template <typename scalar_t, typename Fn>
void for_each_row(const cekl::Batch<scalar_t>& b, Fn fn) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(b.cols, 1));
  at::parallel_for(0, b.rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t offset = i * b.cols;
      fn(RowPtrs<scalar_t>{b.z + offset, b.r ? b.r + offset : nullptr, b.out ? b.out + offset : nullptr,
                           b.target[i], b.row_scale[i]},
         i);
    }
  });
}

template <typename scalar_t>
void zero_row(const RowPtrs<scalar_t>& row, int64_t cols) {
  std::fill(row.out, row.out + cols, static_cast<scalar_t>(0.f));
}

// Rows in parallel (at::parallel_for); the host side of each op is ops.h.
struct CpuKernels {
  template <typename scalar_t>
  static void forward(const cekl::Batch<scalar_t>& b, float* rows, const cekl::Schedule& /*CUDA only*/) {
    for_each_row(b, [&](const RowPtrs<scalar_t>& row, int64_t i) {
      if (row.scale == 0.f) {  // ignored row: no loss, zero gradient
        zero_row(row, b.cols);
        return;
      }
      const Row fin = cekl::finish(row_state(row, b.p), b.p.mode);
      cekl::store_row(fin, rows + i * cekl::kRowCols);
      row_grad(row, fin, b.p, b.cols);
    });
  }

  template <typename scalar_t>
  static void stats(const cekl::Batch<scalar_t>& b, float* stats) {
    for_each_row(b, [&](const RowPtrs<scalar_t>& row, int64_t i) {
      const State s = row.scale == 0.f ? cekl::empty_state() : row_state(row, b.p);
      cekl::store_stats(s, stats + i * cekl::kStatCols);
    });
  }

  static void rescale(const float* stats, const float* maxima, float* sums, int64_t n) {
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) cekl::rescale_row(stats, maxima, sums, i);
    });
  }

  static void finish(const float* maxima, const float* sums, const float* row_scale, int mode, float* rows,
                     int64_t n) {
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) cekl::finish_row(maxima, sums, row_scale, mode, rows, i);
    });
  }

  template <typename scalar_t>
  static void backward(const cekl::Batch<scalar_t>& b, const float* rows) {
    for_each_row(b, [&](const RowPtrs<scalar_t>& row, int64_t i) {
      if (row.scale == 0.f) {
        zero_row(row, b.cols);
        return;
      }
      row_grad(row, cekl::load_row(rows + i * cekl::kRowCols), b.p, b.cols);
    });
  }

  template <typename scalar_t>
  static void scale_grad(scalar_t* grad, const float* factor, int64_t n) {
    const float f = *factor;
    if (f == 1.f) return;
    at::parallel_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) grad[i] = static_cast<scalar_t>(static_cast<float>(grad[i]) * f);
    });
  }

  // Per-row bookkeeping of a call, in one sequential pass each (cheap next to the rows).
  template <typename label_t>
  static void prepare(const label_t* labels, int64_t n, const cekl::Labels& shard, double grad_scale,
                      int64_t* target, float* row_scale, float* grad_row_scale, int64_t* counts) {
    int64_t counted = 0, first_bad = -1;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t y = labels[i];
      counted += cekl::label_counted(y, shard) ? 1 : 0;
      if (first_bad < 0 && cekl::label_bad(y, shard)) first_bad = i;
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t y = labels[i];
      target[i] = cekl::label_target(y, shard);
      cekl::row_scales(cekl::label_counted(y, shard), counted, grad_scale, row_scale + i, grad_row_scale + i);
    }
    counts[0] = counted;
    counts[1] = first_bad;
  }

  static void total(const float* rows, int64_t n, const int64_t* counts, float kl_factor, float* loss, float* ce,
                    float* kl) {
    double ce_sum = 0.0, kl_sum = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      ce_sum += rows[i * cekl::kRowCols];
      kl_sum += rows[i * cekl::kRowCols + 1];
    }
    cekl::totals(ce_sum, kl_sum, counts[0], kl_factor, loss, ce, kl);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(vikhr, CPU, m) { register_cekl_kernels<CpuKernels>(m); }

}  // namespace vikhr
