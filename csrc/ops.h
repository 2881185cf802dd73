// Declarations shared by the CPU and CUDA halves of vikhr's ops extension.
#pragma once
#include <torch/extension.h>

#include <optional>

namespace vikhr {

// Row-wise log(sum(exp(x))) over the last dimension of a 2-D tensor, accumulated in fp32.
torch::Tensor logsumexp_rows_cpu(const torch::Tensor& x);
#ifdef VIKHR_WITH_CUDA
torch::Tensor logsumexp_rows_cuda(const torch::Tensor& x);
#endif

// Fused cross-entropy + KL (cekl_math.h has the math, vikhr/ops/cross_entropy_kl.py the driver).
// logits / ref_logits: [N, V_local] fp32, bf16 or fp16, same dtype, contiguous; ref_logits only
// with a KL mode. target: int64 [N], the label's local column in [0, valid_cols) or −1 when the
// label is on another rank or the row is ignored (the caller validates labels). row_scale: fp32
// [N], 1/N_valid for counted rows and 0 for ignored rows (skipped, zero gradient). grad_out: a
// tensor like logits that receives d(loss)/d(logits) and may be logits itself (in place).
//
// Single rank: statistics, finished rows [N, 5] = (ce, kl, lse_z, lse_a, lse_b) and, when
// grad_out is given, the gradient, reading each row once more while it is in cache.
//   cekl_forward(logits, ref, target, row_scale, 1/T, λ·T, mode, valid_cols, grad_out) -> rows
// Vocab parallel: local statistics [N, 8] = maxima (3, MAX-reduced) ++ sums (5, SUM-reduced):
//   cekl_stats(logits, ref, target, row_scale, 1/T, mode, valid_cols) -> stats
//   cekl_rescale(stats, global_maxima [N, 3]) -> sums [N, 5] relative to the global maxima
//   cekl_finish(global_maxima, global_sums, row_scale, mode) -> rows
//   cekl_backward(logits, ref, target, row_scale, rows, 1/T, λ·T, mode, valid_cols, grad_out)
#define VIKHR_CEKL_DECLARE(dev)                                                                                  \
  torch::Tensor cekl_forward_##dev(const torch::Tensor& logits, const std::optional<torch::Tensor>& ref_logits, \
                                   const torch::Tensor& target, const torch::Tensor& row_scale,                 \
                                   double inv_temperature, double kl_coef, int64_t mode, int64_t valid_cols,    \
                                   const std::optional<torch::Tensor>& grad_out);                               \
  torch::Tensor cekl_stats_##dev(const torch::Tensor& logits, const std::optional<torch::Tensor>& ref_logits,   \
                                 const torch::Tensor& target, const torch::Tensor& row_scale,                   \
                                 double inv_temperature, int64_t mode, int64_t valid_cols);                     \
  torch::Tensor cekl_rescale_##dev(const torch::Tensor& stats, const torch::Tensor& maxima);                     \
  torch::Tensor cekl_finish_##dev(const torch::Tensor& maxima, const torch::Tensor& sums,                       \
                                  const torch::Tensor& row_scale, int64_t mode);                                \
  void cekl_backward_##dev(const torch::Tensor& logits, const std::optional<torch::Tensor>& ref_logits,         \
                           const torch::Tensor& target, const torch::Tensor& row_scale, const torch::Tensor& rows, \
                           double inv_temperature, double kl_coef, int64_t mode, int64_t valid_cols,            \
                           const torch::Tensor& grad_out);

VIKHR_CEKL_DECLARE(cpu)
#ifdef VIKHR_WITH_CUDA
VIKHR_CEKL_DECLARE(cuda)
#endif

// Argument checks shared by both devices (defined in cross_entropy_kl.cpp): clear errors
// instead of out-of-bounds reads when the Python driver is bypassed.
void cekl_check_inputs(const torch::Tensor& logits, const std::optional<torch::Tensor>& ref_logits,
                       const torch::Tensor& target, const torch::Tensor& row_scale, int64_t mode, int64_t valid_cols,
                       const std::optional<torch::Tensor>& grad_out, c10::DeviceType device);
void cekl_check_row_tensor(const torch::Tensor& t, int64_t cols, const char* name, c10::DeviceType device);

// Calls fn(scalar_t{}) for the logits dtypes the op accepts: fp32, bf16, fp16.
template <typename Fn>
void cekl_dispatch(at::ScalarType dtype, Fn&& fn) {
  switch (dtype) {
    case at::kFloat:
      fn(float{});
      break;
    case at::kBFloat16:
      fn(c10::BFloat16{});
      break;
    case at::kHalf:
      fn(c10::Half{});
      break;
    default:
      TORCH_CHECK_TYPE(false, "cross_entropy_kl: logits must be float32, bfloat16 or float16, got ", dtype);
  }
}

}  // namespace vikhr
