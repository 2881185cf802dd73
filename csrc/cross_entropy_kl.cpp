// Fused cross-entropy + KL on the CPU: rows in parallel (at::parallel_for), each row read in
// chunks that are converted to fp32 in L1-sized buffers and reduced by vectorisable loops.
// The single-rank forward reads a row once for its statistics and, when a gradient is wanted,
// a second time while it is still in cache to write the gradient (optionally over the logits).
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

// Statistics of one chunk folded into the row's running state (cekl::accumulate, per ISA).
VIKHR_CLONES void chunk_stats(State& s, const float* z, const float* r, int64_t n, const Params& p) {
  cekl::accumulate(s, z, r, n, p);
}

template <int Mode, bool Unit>
__attribute__((always_inline)) inline void grad_loop(const float* z, const float* r, float* g, int64_t n,
                                                     const Row& row, const Params& p, float scale) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) g[i] = scale * cekl::grad_element<Mode, Unit>(z[i], r[i], false, row, p);
}

// Gradient of one chunk; `target` is the label's index within the chunk (outside [0, n): none).
VIKHR_CLONES void chunk_grad(const float* z, const float* r, float* g, int64_t n, int64_t target, const Row& row,
                             const Params& p, float scale) {
  const bool unit = p.inv_temperature == 1.f;
  if (p.mode == cekl::kNone) {
    grad_loop<cekl::kNone, true>(z, z, g, n, row, p, scale);
  } else if (p.mode == cekl::kReverse) {
    unit ? grad_loop<cekl::kReverse, true>(z, r, g, n, row, p, scale)
         : grad_loop<cekl::kReverse, false>(z, r, g, n, row, p, scale);
  } else {
    unit ? grad_loop<cekl::kForward, true>(z, r, g, n, row, p, scale)
         : grad_loop<cekl::kForward, false>(z, r, g, n, row, p, scale);
  }
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

// The pointers of one row; `out` may alias `z` (gradient written over the logits).
template <typename scalar_t>
struct RowPtrs {
  const scalar_t* z;
  const scalar_t* r;  // nullptr without KL
  scalar_t* out;      // nullptr without gradient
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

// Runs `fn(RowPtrs, row_index)` over all rows in parallel.
template <typename scalar_t, typename Fn>
void for_each_row(const torch::Tensor& z, const std::optional<torch::Tensor>& r, const std::optional<torch::Tensor>& out,
                  const torch::Tensor& target, const torch::Tensor& row_scale, Fn fn) {
  const int64_t rows = z.size(0), cols = z.size(1);
  const scalar_t* zp = z.data_ptr<scalar_t>();
  const scalar_t* rp = r ? r->data_ptr<scalar_t>() : nullptr;
  scalar_t* op = out ? out->data_ptr<scalar_t>() : nullptr;
  const int64_t* tp = target.data_ptr<int64_t>();
  const float* sp = row_scale.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      RowPtrs<scalar_t> row{zp + i * cols, rp ? rp + i * cols : nullptr, op ? op + i * cols : nullptr, tp[i], sp[i]};
      fn(row, i);
    }
  });
}

void store_row(float* dst, const Row& row) {
  dst[0] = row.ce;
  dst[1] = row.kl;
  dst[2] = row.lse_z;
  dst[3] = row.lse_a;
  dst[4] = row.lse_b;
}

Row load_row(const float* src) { return Row{src[0], src[1], src[2], src[3], src[4]}; }

}  // namespace

void cekl_check_row_tensor(const torch::Tensor& t, int64_t cols, const char* name, c10::DeviceType device) {
  TORCH_CHECK(t.device().type() == device, "cross_entropy_kl: ", name, " is on ", t.device());
  TORCH_CHECK(t.dim() == 2 && t.size(1) == cols, "cross_entropy_kl: ", name, " must be [N, ", cols, "], got ",
              t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == torch::kFloat32, "cross_entropy_kl: ", name, " must be float32");
  TORCH_CHECK(t.is_contiguous(), "cross_entropy_kl: ", name, " must be contiguous");
}

void cekl_check_inputs(const torch::Tensor& logits, const std::optional<torch::Tensor>& ref_logits,
                       const torch::Tensor& target, const torch::Tensor& row_scale, int64_t mode, int64_t valid_cols,
                       const std::optional<torch::Tensor>& grad_out, c10::DeviceType device) {
  TORCH_CHECK(logits.dim() == 2, "cross_entropy_kl: logits must be [N, V], got ", logits.sizes());
  TORCH_CHECK(logits.device().type() == device, "cross_entropy_kl: logits are on ", logits.device());
  TORCH_CHECK(logits.is_contiguous(), "cross_entropy_kl: logits must be contiguous");
  TORCH_CHECK_TYPE(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16 ||
                       logits.scalar_type() == at::kHalf,
                   "cross_entropy_kl: logits must be float32, bfloat16 or float16, got ", logits.scalar_type());
  TORCH_CHECK(mode >= cekl::kNone && mode <= cekl::kForward, "cross_entropy_kl: unknown KL mode ", mode);
  TORCH_CHECK(valid_cols >= 0 && valid_cols <= logits.size(1), "cross_entropy_kl: valid_cols ", valid_cols,
              " outside [0, ", logits.size(1), "]");
  const auto n = logits.size(0);
  if (mode != cekl::kNone) {
    TORCH_CHECK(ref_logits.has_value(), "cross_entropy_kl: a KL mode needs ref_logits");
    TORCH_CHECK(ref_logits->sizes() == logits.sizes(), "cross_entropy_kl: ref_logits shape ", ref_logits->sizes(),
                " != logits shape ", logits.sizes());
    TORCH_CHECK(ref_logits->device() == logits.device(), "cross_entropy_kl: ref_logits on ", ref_logits->device(),
                ", logits on ", logits.device());
    TORCH_CHECK_TYPE(ref_logits->scalar_type() == logits.scalar_type(), "cross_entropy_kl: ref_logits dtype ",
                     ref_logits->scalar_type(), " != logits dtype ", logits.scalar_type());
    TORCH_CHECK(ref_logits->is_contiguous(), "cross_entropy_kl: ref_logits must be contiguous");
  }
  TORCH_CHECK(target.dim() == 1 && target.size(0) == n && target.scalar_type() == torch::kInt64 &&
                  target.device() == logits.device() && target.is_contiguous(),
              "cross_entropy_kl: target must be a contiguous int64 [", n, "] tensor on ", logits.device());
  TORCH_CHECK(row_scale.dim() == 1 && row_scale.size(0) == n && row_scale.scalar_type() == torch::kFloat32 &&
                  row_scale.device() == logits.device() && row_scale.is_contiguous(),
              "cross_entropy_kl: row_scale must be a contiguous float32 [", n, "] tensor on ", logits.device());
  if (grad_out.has_value()) {
    TORCH_CHECK(grad_out->sizes() == logits.sizes() && grad_out->scalar_type() == logits.scalar_type() &&
                    grad_out->device() == logits.device() && grad_out->is_contiguous(),
                "cross_entropy_kl: grad_out must be a contiguous tensor like logits");
  }
}

torch::Tensor cekl_forward_cpu(const torch::Tensor& logits, const std::optional<torch::Tensor>& ref_logits,
                               const torch::Tensor& target, const torch::Tensor& row_scale, double inv_temperature,
                               double kl_coef, int64_t mode, int64_t valid_cols,
                               const std::optional<torch::Tensor>& grad_out) {
  cekl_check_inputs(logits, ref_logits, target, row_scale, mode, valid_cols, grad_out, torch::kCPU);
  const Params p{static_cast<float>(inv_temperature), static_cast<float>(kl_coef), static_cast<int>(mode), valid_cols};
  auto rows = torch::zeros({logits.size(0), cekl::kRowCols}, logits.options().dtype(torch::kFloat32));
  float* rows_p = rows.data_ptr<float>();
  const int64_t cols = logits.size(1);
  cekl_dispatch(logits.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    for_each_row<scalar_t>(logits, ref_logits, grad_out, target, row_scale, [&](const RowPtrs<scalar_t>& row, int64_t i) {
      if (row.scale == 0.f) {  // ignored row: no loss, zero gradient
        if (row.out != nullptr) std::fill(row.out, row.out + cols, static_cast<scalar_t>(0.f));
        return;
      }
      const Row fin = cekl::finish(row_state(row, p), p.mode);
      store_row(rows_p + i * cekl::kRowCols, fin);
      if (row.out != nullptr) row_grad(row, fin, p, cols);
    });
  });
  return rows;
}

torch::Tensor cekl_stats_cpu(const torch::Tensor& logits, const std::optional<torch::Tensor>& ref_logits,
                             const torch::Tensor& target, const torch::Tensor& row_scale, double inv_temperature,
                             int64_t mode, int64_t valid_cols) {
  cekl_check_inputs(logits, ref_logits, target, row_scale, mode, valid_cols, std::nullopt, torch::kCPU);
  const Params p{static_cast<float>(inv_temperature), 0.f, static_cast<int>(mode), valid_cols};
  auto stats = torch::empty({logits.size(0), cekl::kStatCols}, logits.options().dtype(torch::kFloat32));
  float* st = stats.data_ptr<float>();
  cekl_dispatch(logits.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    for_each_row<scalar_t>(logits, ref_logits, std::nullopt, target, row_scale,
                           [&](const RowPtrs<scalar_t>& row, int64_t i) {
                             const State s = row.scale == 0.f ? cekl::empty_state() : row_state(row, p);
                             float* o = st + i * cekl::kStatCols;
                             // maxima first (MAX-reduced), then the sums (SUM-reduced); see cekl_math.h
                             const float vals[cekl::kStatCols] = {s.mz, s.mx, s.my, s.sz, s.zt, s.sx, s.sy, s.w};
                             std::copy(vals, vals + cekl::kStatCols, o);
                           });
  });
  return stats;
}

torch::Tensor cekl_rescale_cpu(const torch::Tensor& stats, const torch::Tensor& maxima) {
  cekl_check_row_tensor(stats, cekl::kStatCols, "stats", torch::kCPU);
  cekl_check_row_tensor(maxima, cekl::kMaxCols, "maxima", torch::kCPU);
  TORCH_CHECK(stats.size(0) == maxima.size(0), "cross_entropy_kl: stats and maxima row counts differ");
  auto sums = torch::empty({stats.size(0), cekl::kSumCols}, stats.options());
  const float* st = stats.data_ptr<float>();
  const float* mx = maxima.data_ptr<float>();
  float* out = sums.data_ptr<float>();
  at::parallel_for(0, stats.size(0), 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* s = st + i * cekl::kStatCols;
      State state{s[0], s[3], s[4], s[1], s[5], s[2], s[6], s[7]};
      const float* m = mx + i * cekl::kMaxCols;
      cekl::rescale_to(state, m[0], m[1], m[2]);
      const float vals[cekl::kSumCols] = {state.sz, state.zt, state.sx, state.sy, state.w};
      std::copy(vals, vals + cekl::kSumCols, out + i * cekl::kSumCols);
    }
  });
  return sums;
}

torch::Tensor cekl_finish_cpu(const torch::Tensor& maxima, const torch::Tensor& sums, const torch::Tensor& row_scale,
                              int64_t mode) {
  cekl_check_row_tensor(maxima, cekl::kMaxCols, "maxima", torch::kCPU);
  cekl_check_row_tensor(sums, cekl::kSumCols, "sums", torch::kCPU);
  TORCH_CHECK(maxima.size(0) == sums.size(0) && row_scale.numel() == sums.size(0),
              "cross_entropy_kl: row counts of maxima, sums and row_scale differ");
  auto rows = torch::zeros({sums.size(0), cekl::kRowCols}, sums.options());
  const float* m = maxima.data_ptr<float>();
  const float* s = sums.data_ptr<float>();
  const float* sc = row_scale.data_ptr<float>();
  float* out = rows.data_ptr<float>();
  at::parallel_for(0, sums.size(0), 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (sc[i] == 0.f) continue;
      const float* mi = m + i * cekl::kMaxCols;
      const float* si = s + i * cekl::kSumCols;
      const State state{mi[0], si[0], si[1], mi[1], si[2], mi[2], si[3], si[4]};
      store_row(out + i * cekl::kRowCols, cekl::finish(state, static_cast<int>(mode)));
    }
  });
  return rows;
}

void cekl_backward_cpu(const torch::Tensor& logits, const std::optional<torch::Tensor>& ref_logits,
                       const torch::Tensor& target, const torch::Tensor& row_scale, const torch::Tensor& rows,
                       double inv_temperature, double kl_coef, int64_t mode, int64_t valid_cols,
                       const torch::Tensor& grad_out) {
  cekl_check_inputs(logits, ref_logits, target, row_scale, mode, valid_cols, grad_out, torch::kCPU);
  cekl_check_row_tensor(rows, cekl::kRowCols, "rows", torch::kCPU);
  TORCH_CHECK(rows.size(0) == logits.size(0), "cross_entropy_kl: rows has ", rows.size(0), " rows, logits ",
              logits.size(0));
  const Params p{static_cast<float>(inv_temperature), static_cast<float>(kl_coef), static_cast<int>(mode), valid_cols};
  const float* rp = rows.data_ptr<float>();
  const int64_t cols = logits.size(1);
  cekl_dispatch(logits.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    for_each_row<scalar_t>(logits, ref_logits, grad_out, target, row_scale, [&](const RowPtrs<scalar_t>& row, int64_t i) {
      if (row.scale == 0.f) {
        std::fill(row.out, row.out + cols, static_cast<scalar_t>(0.f));
        return;
      }
      row_grad(row, load_row(rp + i * cekl::kRowCols), p, cols);
    });
  });
}

}  // namespace vikhr
