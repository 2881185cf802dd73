// Python bindings of the ops extension. Each op is exposed per device as `<op>_<device>`;
// `compiled_ops()` tells vikhr (and `vikhr doctor`) which op runs on which device.
#include "ops.h"

namespace {

pybind11::dict compiled_ops() {
  pybind11::dict ops;
#ifdef VIKHR_WITH_CUDA
  ops["logsumexp_rows"] = std::vector<std::string>{"cpu", "cuda"};
#else
  ops["logsumexp_rows"] = std::vector<std::string>{"cpu"};
#endif
  return ops;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vikhr fused ops (csrc/)";
  m.def("compiled_ops", &compiled_ops, "op name -> devices it was compiled for");
  m.def("logsumexp_rows_cpu", &vikhr::logsumexp_rows_cpu, "row-wise logsumexp (CPU)");
#ifdef VIKHR_WITH_CUDA
  m.def("logsumexp_rows_cuda", &vikhr::logsumexp_rows_cuda, "row-wise logsumexp (CUDA)");
#endif
}
