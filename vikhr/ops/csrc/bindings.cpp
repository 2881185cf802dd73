// The schemas of vikhr's ops, declared once: the device files register their kernels for the
// CPU and CUDA dispatch keys (ops.h), so `torch.ops.vikhr.<op>` picks the device by its inputs.
// Their fake (meta) kernels for torch.compile are Python, in the module set_python_module names.
// The library is loaded with torch.ops.load_library (no Python module: no pybind11 headers to
// compile); which devices have kernels is asked of the dispatcher (vikhr.ops.build).
#include <torch/library.h>

TORCH_LIBRARY(vikhr, m) {
  m.set_python_module("vikhr.ops.fake");
  m.def("logsumexp_rows(Tensor x) -> Tensor");
  m.def(
      "cekl_forward(Tensor logits, Tensor? ref_logits, Tensor target, Tensor row_scale, float inv_temperature, "
      "float kl_coef, int kl_mode, int valid_cols, Tensor(a!) grad_out, int schedule=0, int blocks_per_sm=0, "
      "int packs_per_step=1) -> Tensor");
  m.def(
      "cekl_stats(Tensor logits, Tensor? ref_logits, Tensor target, Tensor row_scale, float inv_temperature, "
      "int kl_mode, int valid_cols) -> Tensor");
  m.def("cekl_rescale(Tensor stats, Tensor maxima) -> Tensor");
  m.def("cekl_finish(Tensor maxima, Tensor sums, Tensor row_scale, int kl_mode) -> Tensor");
  m.def(
      "cekl_backward(Tensor logits, Tensor? ref_logits, Tensor target, Tensor row_scale, Tensor rows, "
      "float inv_temperature, float kl_coef, int kl_mode, int valid_cols, Tensor(a!) grad_out) -> ()");
  m.def("cekl_scale_grad(Tensor(a!) grad, Tensor factor) -> ()");
  m.def(
      "cekl_prepare(Tensor labels, int ignore_index, int start, int local_cols, int vocab, float grad_scale) -> "
      "(Tensor, Tensor, Tensor, Tensor)");
  m.def("cekl_total(Tensor rows, Tensor counts, float kl_factor) -> (Tensor, Tensor, Tensor)");
}
