// Row-wise logsumexp on CUDA: one block per row, each thread keeps an online (max, sum),
// then a block reduction merges the pairs. Accumulation in fp32. The host side (checks,
// output, dtype dispatch) is ops.h.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

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
  } else if (m2 == m) {  // also two +inf maxima, where exp(inf - inf) would make the sum NaN
    s += s2;
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

struct CudaLogsumexpKernels {
  template <typename scalar_t>
  static void logsumexp_rows(const scalar_t* x, float* out, int64_t rows, int64_t cols) {
    logsumexp_rows_kernel<scalar_t><<<rows, kThreads, 0, c10::cuda::getCurrentCUDAStream().stream()>>>(x, out, cols);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(vikhr, CUDA, m) { register_logsumexp_kernels<CudaLogsumexpKernels>(m); }

}  // namespace vikhr
