// Python bindings of the ops extension. Each op is exposed per device as `<op>_<device>`;
// `compiled_ops()` tells vikhr (and `vikhr doctor`) which op runs on which device.
#include "ops.h"

namespace {

pybind11::dict compiled_ops() {
  pybind11::dict ops;
#ifdef VIKHR_WITH_CUDA
  const std::vector<std::string> devices{"cpu", "cuda"};
#else
  const std::vector<std::string> devices{"cpu"};
#endif
  ops["logsumexp_rows"] = devices;
  ops["cross_entropy_kl"] = devices;
  return ops;
}

}  // namespace

#define VIKHR_CEKL_BIND(m, dev)                                                                          \
  m.def("cekl_forward_" #dev, &vikhr::cekl_forward_##dev, "fused CE+KL, single rank (" #dev ")");      \
  m.def("cekl_stats_" #dev, &vikhr::cekl_stats_##dev, "CE+KL local row statistics (" #dev ")");         \
  m.def("cekl_rescale_" #dev, &vikhr::cekl_rescale_##dev, "CE+KL sums at global maxima (" #dev ")");   \
  m.def("cekl_finish_" #dev, &vikhr::cekl_finish_##dev, "CE+KL rows from global stats (" #dev ")");    \
  m.def("cekl_backward_" #dev, &vikhr::cekl_backward_##dev, "CE+KL gradient from rows (" #dev ")");

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vikhr fused ops (csrc/)";
  m.def("compiled_ops", &compiled_ops, "op name -> devices it was compiled for");
  m.def("logsumexp_rows_cpu", &vikhr::logsumexp_rows_cpu, "row-wise logsumexp (CPU)");
  VIKHR_CEKL_BIND(m, cpu)
#ifdef VIKHR_WITH_CUDA
  m.def("logsumexp_rows_cuda", &vikhr::logsumexp_rows_cuda, "row-wise logsumexp (CUDA)");
  VIKHR_CEKL_BIND(m, cuda)
#endif
}
