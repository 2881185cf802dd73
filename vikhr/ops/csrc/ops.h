// The host side of vikhr's ops, shared by the CPU (.cpp) and CUDA (.cu) files: argument checks,
// output allocation and the dtype dispatch are written once here as templates over a device's
// kernels; each device file registers its instantiation for its dispatch key
// (TORCH_LIBRARY_IMPL(vikhr, CPU / CUDA, ...)). The schemas are declared once in bindings.cpp.
//
// A device's CE+KL `Kernels` provide, for the rows of a cekl::Batch (cekl_math.h):
//   forward(batch, rows, schedule)  statistics, finished rows and the gradient (batch.out);
//                                   the cekl::Schedule matters on CUDA only
//   stats(batch, stats)             local statistics [N, 8]
//   rescale(stats, maxima, sums, n) sums relative to the global maxima
//   finish(maxima, sums, row_scale, mode, rows, n)
//   backward(batch, rows)           the gradient from finished rows
//   scale_grad(grad, factor, n)     grad *= *factor unless *factor == 1 (read where it lives)
//   prepare(labels, n, cekl::Labels, grad_scale, target, row_scale, grad_row_scale, counts)
//   total(rows, n, counts, kl_factor, loss, ce, kl)
// and its logsumexp `Kernels` logsumexp_rows(x, out, rows, cols).
#pragma once

// Only the headers the host side uses (not ATen.h, which pulls in every operator and doubles
// the compile time of the first use).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "cekl_math.h"

namespace vikhr {

// The ops (schemas in bindings.cpp):
//
// logsumexp_rows(x [N, V]) -> [N] fp32: row-wise log(sum(exp(x))), accumulated in fp32.
//
// Fused cross-entropy + KL (cekl_math.h has the math, vikhr/ops/cross_entropy_kl.py the driver).
// Before and after the row kernels, one launch each (instead of a dozen small tensor ops):
//   cekl_prepare(labels int64/int32 [N], ignore_index, start, local_cols, vocab, grad_scale)
//     -> (target int64 [N], row_scale fp32 [N], grad_row_scale fp32 [N], counts int64 [2])
//     counts = (rows counted, index of the first label outside [0, vocab) or −1)
//   cekl_total(rows [N, 5], counts, kl_factor) -> (loss, ce, kl): fp32 scalars, means over the
//     counted rows, loss = ce + kl_factor · kl
// logits / ref_logits: [N, V_local] fp32, bf16 or fp16, same dtype, contiguous; ref_logits only
// with a KL mode. target: int64 [N], the label's local column in [0, valid_cols) or −1 when the
// label is on another rank or the row is ignored (the caller validates labels). row_scale: fp32
// [N], 1/N_valid for counted rows and 0 for ignored rows (skipped, zero gradient). grad_out: a
// tensor like logits that receives d(loss)/d(logits) and may be logits itself (in place).
//
// Single rank with a gradient: statistics, finished rows [N, 5] = (ce, kl, lse_z, lse_a, lse_b)
// and the gradient, reading each row once more while it is in cache.
//   cekl_forward(logits, ref, target, row_scale, 1/T, λ·T, kl_mode, valid_cols, grad_out,
//                schedule=0, blocks_per_sm=0, packs_per_step=1) -> rows
// Vocab parallel, or no gradient: local statistics [N, 8] = maxima (3, MAX-reduced across the
// group) ++ sums (5, SUM-reduced):
//   cekl_stats(logits, ref, target, row_scale, 1/T, kl_mode, valid_cols) -> stats
//   cekl_rescale(stats, global_maxima [N, 3]) -> sums [N, 5] relative to the global maxima
//   cekl_finish(global_maxima, global_sums, row_scale, kl_mode) -> rows
//   cekl_backward(logits, ref, target, row_scale, rows, 1/T, λ·T, kl_mode, valid_cols, grad_out)
// The autograd backward's rescaling by the incoming gradient, decided on the device (no host
// sync) and free when the factor is 1 (the caller folded its loss scale into row_scale):
//   cekl_scale_grad(grad, factor fp32 [1] on grad's device)

namespace detail {

// Calls fn(scalar_t{}) for the logits dtypes the CE+KL op accepts: fp32, bf16, fp16.
template <typename Fn>
void dispatch_logits_dtype(at::ScalarType dtype, Fn&& fn) {
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

// Clear errors instead of out-of-bounds reads when the Python driver is bypassed.
inline void check_row_tensor(const at::Tensor& t, int64_t cols, const char* name, const at::Device& device) {
  TORCH_CHECK(t.device() == device, "cross_entropy_kl: ", name, " is on ", t.device(), ", expected ", device);
  TORCH_CHECK(t.dim() == 2 && t.size(1) == cols, "cross_entropy_kl: ", name, " must be [N, ", cols, "], got ",
              t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, "cross_entropy_kl: ", name, " must be float32");
  TORCH_CHECK(t.is_contiguous(), "cross_entropy_kl: ", name, " must be contiguous");
}

inline void check_inputs(const at::Tensor& logits, const std::optional<at::Tensor>& ref_logits,
                         const at::Tensor& target, const at::Tensor& row_scale, int64_t kl_mode, int64_t valid_cols,
                         const std::optional<at::Tensor>& grad_out) {
  TORCH_CHECK(logits.dim() == 2, "cross_entropy_kl: logits must be [N, V], got ", logits.sizes());
  TORCH_CHECK(logits.is_contiguous(), "cross_entropy_kl: logits must be contiguous");
  TORCH_CHECK_TYPE(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16 ||
                       logits.scalar_type() == at::kHalf,
                   "cross_entropy_kl: logits must be float32, bfloat16 or float16, got ", logits.scalar_type());
  TORCH_CHECK(kl_mode >= cekl::kNone && kl_mode <= cekl::kForward, "cross_entropy_kl: unknown KL mode ", kl_mode);
  TORCH_CHECK(valid_cols >= 0 && valid_cols <= logits.size(1), "cross_entropy_kl: valid_cols ", valid_cols,
              " outside [0, ", logits.size(1), "]");
  const auto n = logits.size(0);
  if (kl_mode != cekl::kNone) {
    TORCH_CHECK(ref_logits.has_value(), "cross_entropy_kl: a KL mode needs ref_logits");
    TORCH_CHECK(ref_logits->sizes() == logits.sizes(), "cross_entropy_kl: ref_logits shape ", ref_logits->sizes(),
                " != logits shape ", logits.sizes());
    TORCH_CHECK(ref_logits->device() == logits.device(), "cross_entropy_kl: ref_logits on ", ref_logits->device(),
                ", logits on ", logits.device());
    TORCH_CHECK_TYPE(ref_logits->scalar_type() == logits.scalar_type(), "cross_entropy_kl: ref_logits dtype ",
                     ref_logits->scalar_type(), " != logits dtype ", logits.scalar_type());
    TORCH_CHECK(ref_logits->is_contiguous(), "cross_entropy_kl: ref_logits must be contiguous");
  }
  TORCH_CHECK(target.dim() == 1 && target.size(0) == n && target.scalar_type() == at::kLong &&
                  target.device() == logits.device() && target.is_contiguous(),
              "cross_entropy_kl: target must be a contiguous int64 [", n, "] tensor on ", logits.device());
  TORCH_CHECK(row_scale.dim() == 1 && row_scale.size(0) == n && row_scale.scalar_type() == at::kFloat &&
                  row_scale.device() == logits.device() && row_scale.is_contiguous(),
              "cross_entropy_kl: row_scale must be a contiguous float32 [", n, "] tensor on ", logits.device());
  if (grad_out.has_value()) {
    TORCH_CHECK(grad_out->sizes() == logits.sizes() && grad_out->scalar_type() == logits.scalar_type() &&
                    grad_out->device() == logits.device() && grad_out->is_contiguous(),
                "cross_entropy_kl: grad_out must be a contiguous tensor like logits");
  }
}

inline at::Tensor float_rows(const at::Tensor& like, int64_t cols) {
  return at::zeros({like.size(0), cols}, like.options().dtype(at::kFloat));
}

// Calls fn(batch) with the raw pointers for the logits' dtype (arguments already checked).
template <typename Fn>
void with_batch(const at::Tensor& logits, const std::optional<at::Tensor>& ref_logits, const at::Tensor& target,
                const at::Tensor& row_scale, double inv_temperature, double kl_coef, int64_t kl_mode,
                int64_t valid_cols, const std::optional<at::Tensor>& grad_out, Fn&& fn) {
  if (logits.size(0) == 0) return;
  const cekl::Params p{static_cast<float>(inv_temperature), static_cast<float>(kl_coef), static_cast<int>(kl_mode),
                       valid_cols};
  dispatch_logits_dtype(logits.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    // Without a KL mode the reference is never read, even when given.
    const bool with_ref = kl_mode != cekl::kNone;
    fn(cekl::Batch<scalar_t>{logits.data_ptr<scalar_t>(), with_ref ? ref_logits->data_ptr<scalar_t>() : nullptr,
                             grad_out ? grad_out->data_ptr<scalar_t>() : nullptr, target.data_ptr<int64_t>(),
                             row_scale.data_ptr<float>(), logits.size(0), logits.size(1), p});
  });
}

}  // namespace detail

template <class Kernels>
at::Tensor cekl_forward(const at::Tensor& logits, const std::optional<at::Tensor>& ref_logits,
                        const at::Tensor& target, const at::Tensor& row_scale, double inv_temperature,
                        double kl_coef, int64_t kl_mode, int64_t valid_cols, const at::Tensor& grad_out,
                        int64_t schedule, int64_t blocks_per_sm, int64_t packs_per_step) {
  detail::check_inputs(logits, ref_logits, target, row_scale, kl_mode, valid_cols, grad_out);
  TORCH_CHECK(schedule >= cekl::kRowPerBlock && schedule <= cekl::kSharedRow, "cross_entropy_kl: unknown schedule ",
              schedule);
  TORCH_CHECK(blocks_per_sm >= 0, "cross_entropy_kl: blocks_per_sm must be >= 0, got ", blocks_per_sm);
  TORCH_CHECK(packs_per_step == 1 || packs_per_step == 2, "cross_entropy_kl: packs_per_step must be 1 or 2, got ",
              packs_per_step);
  const c10::OptionalDeviceGuard guard(logits.device());
  auto rows = detail::float_rows(logits, cekl::kRowCols);
  detail::with_batch(logits, ref_logits, target, row_scale, inv_temperature, kl_coef, kl_mode, valid_cols, grad_out,
                     [&](const auto& batch) {
                       Kernels::forward(batch, rows.data_ptr<float>(),
                                        cekl::Schedule{schedule, blocks_per_sm, packs_per_step});
                     });
  return rows;
}

template <class Kernels>
at::Tensor cekl_stats(const at::Tensor& logits, const std::optional<at::Tensor>& ref_logits, const at::Tensor& target,
                      const at::Tensor& row_scale, double inv_temperature, int64_t kl_mode, int64_t valid_cols) {
  detail::check_inputs(logits, ref_logits, target, row_scale, kl_mode, valid_cols, std::nullopt);
  const c10::OptionalDeviceGuard guard(logits.device());
  auto stats = detail::float_rows(logits, cekl::kStatCols);
  detail::with_batch(logits, ref_logits, target, row_scale, inv_temperature, 0.0, kl_mode, valid_cols, std::nullopt,
                     [&](const auto& batch) { Kernels::stats(batch, stats.data_ptr<float>()); });
  return stats;
}

template <class Kernels>
at::Tensor cekl_rescale(const at::Tensor& stats, const at::Tensor& maxima) {
  detail::check_row_tensor(stats, cekl::kStatCols, "stats", stats.device());
  detail::check_row_tensor(maxima, cekl::kMaxCols, "maxima", stats.device());
  TORCH_CHECK(stats.size(0) == maxima.size(0), "cross_entropy_kl: stats and maxima row counts differ");
  const c10::OptionalDeviceGuard guard(stats.device());
  auto sums = detail::float_rows(stats, cekl::kSumCols);
  if (stats.size(0) > 0) {
    Kernels::rescale(stats.data_ptr<float>(), maxima.data_ptr<float>(), sums.data_ptr<float>(), stats.size(0));
  }
  return sums;
}

template <class Kernels>
at::Tensor cekl_finish(const at::Tensor& maxima, const at::Tensor& sums, const at::Tensor& row_scale, int64_t kl_mode) {
  detail::check_row_tensor(maxima, cekl::kMaxCols, "maxima", sums.device());
  detail::check_row_tensor(sums, cekl::kSumCols, "sums", sums.device());
  TORCH_CHECK(maxima.size(0) == sums.size(0) && row_scale.dim() == 1 && row_scale.size(0) == sums.size(0) &&
                  row_scale.scalar_type() == at::kFloat && row_scale.device() == sums.device() &&
                  row_scale.is_contiguous(),
              "cross_entropy_kl: maxima, sums and row_scale must have the same rows (row_scale contiguous float32)");
  TORCH_CHECK(kl_mode >= cekl::kNone && kl_mode <= cekl::kForward, "cross_entropy_kl: unknown KL mode ", kl_mode);
  const c10::OptionalDeviceGuard guard(sums.device());
  auto rows = detail::float_rows(sums, cekl::kRowCols);
  if (sums.size(0) > 0) {
    Kernels::finish(maxima.data_ptr<float>(), sums.data_ptr<float>(), row_scale.data_ptr<float>(),
                    static_cast<int>(kl_mode), rows.data_ptr<float>(), sums.size(0));
  }
  return rows;
}

template <class Kernels>
void cekl_backward(const at::Tensor& logits, const std::optional<at::Tensor>& ref_logits, const at::Tensor& target,
                   const at::Tensor& row_scale, const at::Tensor& rows, double inv_temperature, double kl_coef,
                   int64_t kl_mode, int64_t valid_cols, const at::Tensor& grad_out) {
  detail::check_inputs(logits, ref_logits, target, row_scale, kl_mode, valid_cols, grad_out);
  detail::check_row_tensor(rows, cekl::kRowCols, "rows", logits.device());
  TORCH_CHECK(rows.size(0) == logits.size(0), "cross_entropy_kl: rows has ", rows.size(0), " rows, logits ",
              logits.size(0));
  const c10::OptionalDeviceGuard guard(logits.device());
  detail::with_batch(logits, ref_logits, target, row_scale, inv_temperature, kl_coef, kl_mode, valid_cols, grad_out,
                     [&](const auto& batch) { Kernels::backward(batch, rows.data_ptr<float>()); });
}

template <class Kernels>
void cekl_scale_grad(const at::Tensor& grad, const at::Tensor& factor) {
  TORCH_CHECK(grad.is_contiguous(), "cross_entropy_kl: grad must be contiguous");
  TORCH_CHECK(factor.numel() == 1 && factor.scalar_type() == at::kFloat && factor.device() == grad.device(),
              "cross_entropy_kl: factor must be one float32 value on ", grad.device());
  if (grad.numel() == 0) return;
  const c10::OptionalDeviceGuard guard(grad.device());
  detail::dispatch_logits_dtype(grad.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    Kernels::scale_grad(grad.data_ptr<scalar_t>(), factor.data_ptr<float>(), grad.numel());
  });
}

template <class Kernels>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cekl_prepare(const at::Tensor& labels, int64_t ignore_index,
                                                                        int64_t start, int64_t local_cols,
                                                                        int64_t vocab, double grad_scale) {
  TORCH_CHECK(labels.dim() == 1 && (labels.scalar_type() == at::kLong || labels.scalar_type() == at::kInt),
              "cross_entropy_kl: labels must be a 1-D int64 or int32 tensor, got ", labels.scalar_type(), " ",
              labels.sizes());
  TORCH_CHECK(start >= 0 && local_cols >= 0 && vocab > 0, "cross_entropy_kl: bad shard (start ", start,
              ", local_cols ", local_cols, ", vocab ", vocab, ")");
  const c10::OptionalDeviceGuard guard(labels.device());
  const auto l = labels.contiguous();
  const int64_t n = l.size(0);
  auto target = at::empty({n}, l.options().dtype(at::kLong));
  auto row_scale = at::empty({n}, l.options().dtype(at::kFloat));
  auto grad_row_scale = at::empty({n}, l.options().dtype(at::kFloat));
  auto counts = at::empty({2}, l.options().dtype(at::kLong));
  const cekl::Labels shard{ignore_index, start, local_cols, vocab};
  auto run = [&](const auto* ptr) {
    Kernels::prepare(ptr, n, shard, grad_scale, target.data_ptr<int64_t>(), row_scale.data_ptr<float>(),
                     grad_row_scale.data_ptr<float>(), counts.data_ptr<int64_t>());
  };
  if (l.scalar_type() == at::kLong) {
    run(l.data_ptr<int64_t>());
  } else {
    run(l.data_ptr<int32_t>());
  }
  return {target, row_scale, grad_row_scale, counts};
}

template <class Kernels>
std::tuple<at::Tensor, at::Tensor, at::Tensor> cekl_total(const at::Tensor& rows, const at::Tensor& counts,
                                                          double kl_factor) {
  detail::check_row_tensor(rows, cekl::kRowCols, "rows", rows.device());
  TORCH_CHECK(counts.numel() == 2 && counts.scalar_type() == at::kLong && counts.device() == rows.device() &&
                  counts.is_contiguous(),
              "cross_entropy_kl: counts must be the int64 [2] tensor of cekl_prepare, on ", rows.device());
  const c10::OptionalDeviceGuard guard(rows.device());
  auto scalar = [&] { return at::empty({}, rows.options()); };
  at::Tensor loss = scalar(), ce = scalar(), kl = scalar();
  Kernels::total(rows.data_ptr<float>(), rows.size(0), counts.data_ptr<int64_t>(), static_cast<float>(kl_factor),
                 loss.data_ptr<float>(), ce.data_ptr<float>(), kl.data_ptr<float>());
  return {loss, ce, kl};
}

template <class Kernels>
at::Tensor logsumexp_rows(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2, "logsumexp_rows: expected a 2-D tensor, got ", x.dim(), " dimensions");
  const c10::OptionalDeviceGuard guard(x.device());
  const auto xc = x.contiguous();
  auto out = at::empty({xc.size(0)}, xc.options().dtype(at::kFloat));
  if (xc.size(0) == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xc.scalar_type(), "logsumexp_rows", [&] {
    Kernels::logsumexp_rows(xc.data_ptr<scalar_t>(), out.data_ptr<float>(), xc.size(0), xc.size(1));
  });
  return out;
}

// Registration of a device's kernels (from TORCH_LIBRARY_IMPL in the device's file).
template <class Kernels>
void register_logsumexp_kernels(torch::Library& m) {
  m.impl("logsumexp_rows", TORCH_FN(logsumexp_rows<Kernels>));
}

template <class Kernels>
void register_cekl_kernels(torch::Library& m) {
  m.impl("cekl_forward", TORCH_FN(cekl_forward<Kernels>));
  m.impl("cekl_stats", TORCH_FN(cekl_stats<Kernels>));
  m.impl("cekl_rescale", TORCH_FN(cekl_rescale<Kernels>));
  m.impl("cekl_finish", TORCH_FN(cekl_finish<Kernels>));
  m.impl("cekl_backward", TORCH_FN(cekl_backward<Kernels>));
  m.impl("cekl_scale_grad", TORCH_FN(cekl_scale_grad<Kernels>));
  m.impl("cekl_prepare", TORCH_FN(cekl_prepare<Kernels>));
  m.impl("cekl_total", TORCH_FN(cekl_total<Kernels>));
}

}  // namespace vikhr
