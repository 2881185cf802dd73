// Row-wise logsumexp on the CPU: one pass per row with an online max / rescaled sum,
// rows in parallel. The first op of the csrc/ path; the CUDA twin is logsumexp_cuda.cu.
#include <ATen/Parallel.h>
#include <cmath>
#include <limits>

#include "ops.h"

namespace vikhr {

namespace {

template <typename scalar_t>
float row_logsumexp(const scalar_t* row, int64_t cols) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  float m = kNegInf;
  float s = 0.0f;
  for (int64_t c = 0; c < cols; ++c) {
    const float v = static_cast<float>(row[c]);
    if (v == kNegInf) continue;  // contributes exp(-inf) = 0
    if (v > m) {
      // Rescale the running sum to the new maximum (exp(-inf) == 0 on the first element).
      s = s * std::exp(m - v) + 1.0f;
      m = v;
    } else {
      s += std::exp(v - m);
    }
  }
  return m == kNegInf ? m : m + std::log(s);
}

// Rows in parallel; the host side (checks, output, dtype dispatch) is ops.h.
struct CpuLogsumexpKernels {
  template <typename scalar_t>
  static void logsumexp_rows(const scalar_t* x, float* out, int64_t rows, int64_t cols) {
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) out[r] = row_logsumexp(x + r * cols, cols);
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(vikhr, CPU, m) { register_logsumexp_kernels<CpuLogsumexpKernels>(m); }

}  // namespace vikhr
