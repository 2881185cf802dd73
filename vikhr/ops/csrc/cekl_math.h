// Per-row math of the fused cross-entropy + KL op, shared by the CPU (.cpp) and CUDA (.cu) halves.
//
// Notation for one row: z = model logits, r = reference logits, T = temperature,
// a = z / T and b = r / T; P = softmax(z) for CE, Q = softmax(a) and R = softmax(b) for KL.
// Columns at or beyond `valid_cols` (vocabulary padding) are never read: zero probability.
//
// One pass over a row keeps a running state (online softmax): the maxima m_z, m_x, m_y and the
// sums s_z = Σ e^{z−m_z}, s_x = Σ e^{x−m_x}, s_y = Σ e^{y−m_y}, where x is the distribution the
// KL is weighted by (x = a, y = b for the reverse KL(Q‖R); x = b, y = a for the forward KL(R‖Q)),
// plus w = Σ e^{x−m_x} · (x − y − c) with the shift c = m_x − m_y. Then
//     KL = Σ_x (x − y) e^{x−m_x}/s_x − lse_x + lse_y = w / s_x − log s_x + log s_y,
// so the large terms (the maxima) cancel before any rounding. A state is merged into another by
// rescaling both to the larger maxima (`rescale_to`) and adding the sums: the same operation
// serves chunks of a row, threads of a CUDA block and ranks of a vocab-parallel group.
//
// Gradient w.r.t. z of  CE + λ·T²·KL  (per valid row, before the 1/N_valid scaling):
//     CE:                 p − onehot(y)
//     reverse KL(Q‖R):    λ·T · q · (log q − log r − KL)         (d/da of KL is q·(log q − log r − KL))
//     forward KL(R‖Q):    λ·T · (q − r)                            (d/da of −Σ r log q is q − r)
// where the factor T comes from T² · d(a)/d(z) = T² / T.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#ifdef __CUDACC__
#define VIKHR_HD __host__ __device__ __forceinline__
#define VIKHR_SIMD_REDUCE(...)
#else
// always_inline: the CPU hot loops are compiled per instruction set (target_clones) and must
// inline these helpers into each clone.
#define VIKHR_HD inline __attribute__((always_inline))
#define VIKHR_PRAGMA(x) _Pragma(#x)
#define VIKHR_SIMD_REDUCE(...) VIKHR_PRAGMA(omp simd reduction(__VA_ARGS__))
#endif

namespace vikhr {
namespace cekl {

enum KlMode : int { kNone = 0, kReverse = 1, kForward = 2 };

// Schedules of the single-rank forward on CUDA (cross_entropy_kl_cuda.cu; the names are in
// vikhr/ops/cross_entropy_kl.py: CUDA_SCHEDULES). The CPU has one.
enum ScheduleKind : int { kRowPerBlock = 0, kPersistent = 1, kSharedRow = 2 };

struct Schedule {
  int64_t kind;            // ScheduleKind
  int64_t blocks_per_sm;   // the persistent grid's blocks per SM; 0: as many as keep the rows in L2
  int64_t packs_per_step;  // 16-byte packs a thread loads per loop step: 1 or 2
};

// Layout of the per-row tensors exchanged with Python (vikhr/ops/cross_entropy_kl.py; the column
// counts are repeated in vikhr/ops/fake.py).
constexpr int kMaxCols = 3;   // [N, 3] maxima: m_z, m_x, m_y
constexpr int kSumCols = 5;   // [N, 5] sums: s_z, z_target, s_x, s_y, w  (SUM-reduced across ranks)
constexpr int kStatCols = kMaxCols + kSumCols;  // [N, 8] local statistics = maxima ++ sums
constexpr int kRowCols = 5;   // [N, 5] finished rows: ce, kl, lse_z, lse_a, lse_b

struct Params {
  float inv_temperature;  // 1 / T
  float kl_coef;          // λ · T (see the gradient above)
  int mode;               // KlMode
  int64_t valid_cols;     // local columns [0, valid_cols) are real vocabulary
};

struct State {
  float mz, sz, zt, mx, sx, my, sy, w;
};

struct Row {
  float ce, kl, lse_z, lse_a, lse_b;
};

VIKHR_HD State empty_state() {
  return State{-INFINITY, 0.f, 0.f, -INFINITY, 0.f, -INFINITY, 0.f, 0.f};
}

// exp(m_from − m_to) for m_to ≥ m_from; 0 when nothing was accumulated at m_from.
VIKHR_HD float rescale_factor(float m_from, float m_to) {
  return m_from == -INFINITY ? 0.f : expf(m_from - m_to);
}

// The shift c of the KL accumulator; 0 while either distribution has no finite logit yet (then
// x − y is ±inf wherever x is finite and the KL is infinite anyway).
VIKHR_HD float kl_shift(float mx, float my) {
  return (fabsf(mx) < INFINITY && fabsf(my) < INFINITY) ? mx - my : 0.f;
}

// Re-express `s` relative to maxima (mz, mx, my), each ≥ the state's own.
VIKHR_HD void rescale_to(State& s, float mz, float mx, float my) {
  s.sz *= rescale_factor(s.mz, mz);
  const float fx = rescale_factor(s.mx, mx);
  // w is relative to c = m_x − m_y: moving to c' adds (c − c')·s_x before the exp rescaling.
  s.w = s.sx > 0.f ? (s.w + (kl_shift(s.mx, s.my) - kl_shift(mx, my)) * s.sx) * fx : 0.f;
  s.sx *= fx;
  s.sy *= rescale_factor(s.my, my);
  s.mz = mz;
  s.mx = mx;
  s.my = my;
}

VIKHR_HD void merge_into(State& into, State other) {
  const float mz = fmaxf(into.mz, other.mz), mx = fmaxf(into.mx, other.mx), my = fmaxf(into.my, other.my);
  rescale_to(into, mz, mx, my);
  rescale_to(other, mz, mx, my);
  into.sz += other.sz;
  into.zt += other.zt;
  into.sx += other.sx;
  into.sy += other.sy;
  into.w += other.w;
}

// Global state of a row -> its CE, KL and the three log-partition functions the gradient needs.
VIKHR_HD Row finish(const State& s, int mode) {
  Row row;
  row.lse_z = s.mz + logf(s.sz);
  row.ce = row.lse_z - s.zt;
  row.kl = 0.f;
  row.lse_a = row.lse_z;
  row.lse_b = 0.f;
  if (mode != kNone) {
    const float lse_x = s.mx + logf(s.sx), lse_y = s.my + logf(s.sy);
    row.kl = s.w / s.sx - logf(s.sx) + logf(s.sy);
    row.lse_a = mode == kReverse ? lse_x : lse_y;
    row.lse_b = mode == kReverse ? lse_y : lse_x;
  }
  return row;
}

// Packing of the per-row tensors (layout above). Local statistics: maxima first (MAX-reduced
// across ranks), then the sums (SUM-reduced).
VIKHR_HD void store_stats(const State& s, float* dst) {
  dst[0] = s.mz;
  dst[1] = s.mx;
  dst[2] = s.my;
  dst[3] = s.sz;
  dst[4] = s.zt;
  dst[5] = s.sx;
  dst[6] = s.sy;
  dst[7] = s.w;
}

VIKHR_HD State load_stats(const float* src) {
  return State{src[0], src[3], src[4], src[1], src[5], src[2], src[6], src[7]};
}

// The state of a row from the (global) maxima and the sums relative to them.
VIKHR_HD State load_global(const float* maxima, const float* sums) {
  return State{maxima[0], sums[0], sums[1], maxima[1], sums[2], maxima[2], sums[3], sums[4]};
}

VIKHR_HD void store_sums(const State& s, float* dst) {
  dst[0] = s.sz;
  dst[1] = s.zt;
  dst[2] = s.sx;
  dst[3] = s.sy;
  dst[4] = s.w;
}

VIKHR_HD void store_row(const Row& row, float* dst) {
  dst[0] = row.ce;
  dst[1] = row.kl;
  dst[2] = row.lse_z;
  dst[3] = row.lse_a;
  dst[4] = row.lse_b;
}

VIKHR_HD Row load_row(const float* src) { return Row{src[0], src[1], src[2], src[3], src[4]}; }

// Vocab-parallel steps of one row i (the devices only loop over rows).
// Local statistics -> sums relative to the global maxima.
VIKHR_HD void rescale_row(const float* stats, const float* maxima, float* sums, int64_t i) {
  State s = load_stats(stats + i * kStatCols);
  const float* m = maxima + i * kMaxCols;
  rescale_to(s, m[0], m[1], m[2]);
  store_sums(s, sums + i * kSumCols);
}

// Global maxima and sums -> the finished row; ignored rows (scale 0) keep their zeros.
VIKHR_HD void finish_row(const float* maxima, const float* sums, const float* row_scale, int mode, float* rows,
                         int64_t i) {
  if (row_scale[i] == 0.f) return;
  store_row(finish(load_global(maxima + i * kMaxCols, sums + i * kSumCols), mode), rows + i * kRowCols);
}

// The rows of one launch: [rows, cols] row-major buffers of the logits' dtype.
template <typename scalar_t>
struct Batch {
  const scalar_t* z;       // model logits
  const scalar_t* r;       // reference logits; nullptr without KL
  scalar_t* out;           // d(loss)/dz, may be z itself; nullptr when no gradient is wanted
  const int64_t* target;   // [rows] local column of the label, or −1
  const float* row_scale;  // [rows] 1/N_valid, or 0 for an ignored row
  int64_t rows, cols;
  Params p;
};

// What a label means to this rank's shard: labels are global ids; ignore_index marks a row
// without loss; this rank holds the columns [start, start + local_cols) of a vocabulary of
// `vocab` ids. (cekl_prepare turns labels into the kernels' target and row scales.)
struct Labels {
  int64_t ignore_index, start, local_cols, vocab;
};

// Counted in the mean (every row whose label is not ignore_index, a bad label included).
VIKHR_HD bool label_counted(int64_t y, const Labels& l) { return y != l.ignore_index; }

// A counted label outside the vocabulary: the caller is told (its target is −1, so no kernel
// reads out of bounds even when the error is reported later).
VIKHR_HD bool label_bad(int64_t y, const Labels& l) { return y != l.ignore_index && (y < 0 || y >= l.vocab); }

// The label's local column on this rank, or −1 (ignored, bad, or on another rank).
VIKHR_HD int64_t label_target(int64_t y, const Labels& l) {
  const int64_t local = y - l.start;
  return label_counted(y, l) && !label_bad(y, l) && local >= 0 && local < l.local_cols ? local : -1;
}

// The kernels' row scales of one row: 1/N_counted (row_scale) and grad_scale/N_counted (the
// scale of the gradient written, which carries the caller's loss scale); 0 for an ignored row.
VIKHR_HD void row_scales(bool counted, int64_t n_counted, double grad_scale, float* row_scale,
                         float* grad_row_scale) {
  const double denom = n_counted > 0 ? static_cast<double>(n_counted) : 1.0;
  *row_scale = counted ? static_cast<float>(1.0 / denom) : 0.f;
  *grad_row_scale = counted ? static_cast<float>(grad_scale / denom) : 0.f;
}

// The means over counted rows from the float64 sums of the finished rows' ce and kl columns:
// (loss = ce + kl_factor · kl, ce, kl), rounded as float32 arithmetic on the float32 means would.
VIKHR_HD void totals(double ce_sum, double kl_sum, int64_t n_counted, float kl_factor, float* loss, float* ce,
                     float* kl) {
  const double denom = n_counted > 0 ? static_cast<double>(n_counted) : 1.0;
  *ce = static_cast<float>(ce_sum / denom);
  *kl = static_cast<float>(kl_sum / denom);
#ifdef __CUDA_ARCH__
  *loss = __fadd_rn(*ce, __fmul_rn(kl_factor, *kl));  // rounded twice, as on the host: no FMA
#else
  // The float product is exact in double and a double sum of two floats rounds to the float sum,
  // so this is float arithmetic; the casts keep a compiler that contracts (clang, GCC on arm64)
  // from fusing it into one FMA.
  const float weighted = static_cast<float>(static_cast<double>(kl_factor) * static_cast<double>(*kl));
  *loss = static_cast<float>(static_cast<double>(*ce) + static_cast<double>(weighted));
#endif
}

// exp for the bulk loops. On the host: a branch-free Cephes-style polynomial that the compiler
// vectorises (std::exp does not vectorise without -ffast-math); about 1 ulp over [-87, 0],
// exactly 0 below -87.33 and for -inf, NaN for NaN. On the device: the hardware exp2.
#ifdef __CUDA_ARCH__
__device__ __forceinline__ float bulk_exp(float x) { return __expf(x); }
#else
VIKHR_HD float bulk_exp(float x) {
  // Ternaries, not fminf/fmaxf: those keep IEEE NaN rules that stop the vectoriser.
  float xc = x < -87.33654f ? -87.33654f : x;
  xc = xc > 88.0f ? 88.0f : xc;
  // n = round(x / ln 2) with the 1.5·2^23 trick (exact for |n| < 2^22, no rounding-mode calls).
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  // r = x − n·ln 2 in two steps (Cody–Waite) to keep r accurate.
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const float y = p * scale;
  // x != x keeps NaN; below the clamp the true value is under 1e-38: report exact zero.
  return x < -87.33654f ? 0.f : (x != x ? x : y);
}
#endif

// Folds n columns (fp32 values of z and r) into the running state: one chunk of a row on the
// CPU, one vector load of a thread on CUDA. Reverse: x = a, y = b; forward: x = b, y = a.
template <bool Reverse, bool UnitTemperature>
VIKHR_HD void accumulate_kl(State& s, const float* z, const float* r, int64_t n, float t) {
  float cz = -INFINITY, cr = -INFINITY;
  VIKHR_SIMD_REDUCE(max : cz, cr)
  for (int64_t i = 0; i < n; ++i) {
    cz = cz > z[i] ? cz : z[i];
    cr = cr > r[i] ? cr : r[i];
  }
  if (cz > s.mz) {
    s.sz *= rescale_factor(s.mz, cz);
    s.mz = cz;
  }
  // Multiplying by t > 0 is monotone, so the maxima of a and b are the scaled maxima.
  const float cx = Reverse ? cz * t : cr * t, cy = Reverse ? cr * t : cz * t;
  const float mx_new = cx > s.mx ? cx : s.mx, my_new = cy > s.my ? cy : s.my;
  if (mx_new > s.mx || my_new > s.my) rescale_to(s, s.mz, mx_new, my_new);
  // A maximum of −inf means every value so far is −inf: shift by 0 so exp gives 0, not NaN.
  const float mz = s.mz == -INFINITY ? 0.f : s.mz;
  const float mx = s.mx == -INFINITY ? 0.f : s.mx, my = s.my == -INFINITY ? 0.f : s.my;
  const float c = kl_shift(s.mx, s.my);
  float sz = 0.f, sx = 0.f, sy = 0.f, w = 0.f;
  VIKHR_SIMD_REDUCE(+ : sz, sx, sy, w)
  for (int64_t i = 0; i < n; ++i) {
    const float a = UnitTemperature ? z[i] : z[i] * t, b = UnitTemperature ? r[i] : r[i] * t;
    const float x = Reverse ? a : b, y = Reverse ? b : a;
    const float ex = bulk_exp(x - mx), ey = bulk_exp(y - my);
    sx += ex;
    sy += ey;
    w += ex > 0.f ? ex * (x - y - c) : 0.f;
    // With T = 1, a == z exactly and m_a == m_z: reuse its exp.
    sz += UnitTemperature ? (Reverse ? ex : ey) : bulk_exp(z[i] - mz);
  }
  s.sz += sz;
  s.sx += sx;
  s.sy += sy;
  s.w += w;
}

VIKHR_HD void accumulate_ce(State& s, const float* z, int64_t n) {
  float cz = -INFINITY;
  VIKHR_SIMD_REDUCE(max : cz)
  for (int64_t i = 0; i < n; ++i) cz = cz > z[i] ? cz : z[i];
  if (cz > s.mz) {
    s.sz *= rescale_factor(s.mz, cz);
    s.mz = cz;
  }
  const float mz = s.mz == -INFINITY ? 0.f : s.mz;
  float sz = 0.f;
  VIKHR_SIMD_REDUCE(+ : sz)
  for (int64_t i = 0; i < n; ++i) sz += bulk_exp(z[i] - mz);
  s.sz += sz;
}

// A compile-time (KL mode, T == 1) pair: the inner loops are instantiated once per variant, so
// the per-element code has no branches left.
template <int M, bool Unit>
struct Variant {
  static constexpr int kMode = M;
  static constexpr bool kUnitTemperature = Unit;
};

// The one runtime -> compile-time ladder: fn(Variant<mode, T == 1>{}). CE alone ignores the
// temperature (it scales only the two KL distributions).
template <typename Fn>
VIKHR_HD void dispatch_variant(const Params& p, Fn&& fn) {
  const bool unit = p.inv_temperature == 1.f;
  if (p.mode == kNone) {
    fn(Variant<kNone, true>{});
  } else if (p.mode == kReverse) {
    if (unit) {
      fn(Variant<kReverse, true>{});
    } else {
      fn(Variant<kReverse, false>{});
    }
  } else {
    if (unit) {
      fn(Variant<kForward, true>{});
    } else {
      fn(Variant<kForward, false>{});
    }
  }
}

// Folds n columns into the running state, for the variant V (accumulate_ce or accumulate_kl).
template <typename V>
VIKHR_HD void accumulate(State& s, const float* z, const float* r, int64_t n, const Params& p) {
  if constexpr (V::kMode == kNone) {
    accumulate_ce(s, z, n);
  } else {
    accumulate_kl<V::kMode == kReverse, V::kUnitTemperature>(s, z, r, n, p.inv_temperature);
  }
}

// d(loss_row)/dz for one column (before the row scale); `is_target` adds the −onehot term.
template <typename V>
VIKHR_HD float grad_element(float z, float r, bool is_target, const Row& row, const Params& p) {
  constexpr int Mode = V::kMode;
  constexpr bool UnitTemperature = V::kUnitTemperature;
  const float prob = bulk_exp(z - row.lse_z);
  float g = prob - (is_target ? 1.f : 0.f);
  if constexpr (Mode != kNone) {
    const float a = UnitTemperature ? z : z * p.inv_temperature;
    const float b = UnitTemperature ? r : r * p.inv_temperature;
    const float log_q = a - row.lse_a;
    const float q = UnitTemperature ? prob : bulk_exp(log_q);
    if constexpr (Mode == kReverse) {
      // Where q = 0 (z = −inf) the term must be 0, not 0 · (−inf): floor both logs at −1e30
      // (a select the vectoriser accepts, unlike a branch on q).
      const float log_q_floor = log_q < -1e30f ? -1e30f : log_q;
      const float log_r = b - row.lse_b;
      const float log_r_floor = log_r < -1e30f ? -1e30f : log_r;
      g += p.kl_coef * q * (log_q_floor - log_r_floor - row.kl);
    } else {
      g += p.kl_coef * (q - bulk_exp(b - row.lse_b));
    }
  }
  return g;
}

}  // namespace cekl
}  // namespace vikhr
