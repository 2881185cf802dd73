// Declarations shared by the CPU and CUDA halves of vikhr's ops extension.
#pragma once
#include <torch/extension.h>

namespace vikhr {

// Row-wise log(sum(exp(x))) over the last dimension of a 2-D tensor, accumulated in fp32.
torch::Tensor logsumexp_rows_cpu(const torch::Tensor& x);
#ifdef VIKHR_WITH_CUDA
torch::Tensor logsumexp_rows_cuda(const torch::Tensor& x);
#endif

}  // namespace vikhr
