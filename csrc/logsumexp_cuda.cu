// Row-wise logsumexp on CUDA: one block per row, each thread keeps an online (max, sum),
// then a block reduction merges the pairs. Accumulation in fp32.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "ops.h"

namespace vikhr {

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
  if (m2 == -INFINITY) return;
  if (m == -INFINITY) {
    m = m2;
    s = s2;
    return;
  }
  if (m2 > m) {
    s = s * __expf(m - m2) + s2;
    m = m2;
  } else {
    s += s2 * __expf(m2 - m);
  }
}

template <typename scalar_t>
__global__ void logsumexp_rows_kernel(const scalar_t* __restrict__ x, float* __restrict__ out, int64_t cols) {
  const scalar_t* row = x + static_cast<int64_t>(blockIdx.x) * cols;
  float m = -INFINITY, s = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    merge(m, s, static_cast<float>(row[c]), 1.0f);
  }
  __shared__ float sm[kThreads];
  __shared__ float ss[kThreads];
  sm[threadIdx.x] = m;
  ss[threadIdx.x] = s;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      float mm = sm[threadIdx.x], s0 = ss[threadIdx.x];
      merge(mm, s0, sm[threadIdx.x + stride], ss[threadIdx.x + stride]);
      sm[threadIdx.x] = mm;
      ss[threadIdx.x] = s0;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = (sm[0] == -INFINITY) ? -INFINITY : sm[0] + logf(ss[0]);
}

}  // namespace

torch::Tensor logsumexp_rows_cuda(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 2, "logsumexp_rows: expected a 2-D tensor, got ", x.dim(), " dimensions");
  TORCH_CHECK(x.is_cuda(), "logsumexp_rows_cuda: tensor is on ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  auto xc = x.contiguous();
  auto out = torch::empty({xc.size(0)}, xc.options().dtype(torch::kFloat32));
  if (xc.size(0) == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xc.scalar_type(), "logsumexp_rows_cuda", [&] {
    logsumexp_rows_kernel<scalar_t><<<xc.size(0), kThreads, 0, stream>>>(
        xc.data_ptr<scalar_t>(), out.data_ptr<float>(), xc.size(1));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace vikhr
