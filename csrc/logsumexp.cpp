// Row-wise logsumexp on the CPU: one pass per row with an online max / rescaled sum,
// rows in parallel. The first op of the csrc/ path; the CUDA twin is logsumexp_cuda.cu.
#include <ATen/Parallel.h>
#include <cmath>
#include <limits>

#include "ops.h"

namespace vikhr {

namespace {

template <typename scalar_t>
void logsumexp_rows_kernel(const scalar_t* x, float* out, int64_t rows, int64_t cols) {
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* row = x + r * cols;
      float m = -std::numeric_limits<float>::infinity();
      float s = 0.0f;
      for (int64_t c = 0; c < cols; ++c) {
        const float v = static_cast<float>(row[c]);
        if (v == -std::numeric_limits<float>::infinity()) continue;  // contributes exp(-inf) = 0
        if (v > m) {
          // Rescale the running sum to the new maximum (exp(-inf) == 0 on the first element).
          s = s * std::exp(m - v) + 1.0f;
          m = v;
        } else {
          s += std::exp(v - m);
        }
      }
      out[r] = (m == -std::numeric_limits<float>::infinity()) ? m : m + std::log(s);
    }
  });
}

}  // namespace

torch::Tensor logsumexp_rows_cpu(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 2, "logsumexp_rows: expected a 2-D tensor, got ", x.dim(), " dimensions");
  TORCH_CHECK(x.device().is_cpu(), "logsumexp_rows_cpu: tensor is on ", x.device());
  auto xc = x.contiguous();
  auto out = torch::empty({xc.size(0)}, xc.options().dtype(torch::kFloat32));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xc.scalar_type(), "logsumexp_rows_cpu", [&] {
    logsumexp_rows_kernel<scalar_t>(xc.data_ptr<scalar_t>(), out.data_ptr<float>(), xc.size(0), xc.size(1));
  });
  return out;
}

}  // namespace vikhr
