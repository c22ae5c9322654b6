// Fused CPU loop of the LSTM family: forward and hand-written backward.
//
// One native loop over time per layer and direction, in one parallel region over the batch:
// each thread runs every step for its own block of sequences (they never interact), so
// nothing synchronises per step. Per step and thread: the gates of its rows from one GEMM
// (b + [x_t | h_{t-1}] [W_ih | W_hh]^T; with at::addmm where the micro-kernel below does not
// apply, after one input-projection GEMM for all steps) and one fused element-wise pass. The
// backward, by hand, in the same shape: per step the gate gradients of its rows, then
// dh_{t-1} += dG W_hh, dx_t = dG W_ih and per-thread sums dW_hh^T += h_{t-1}^T dG,
// dW_ih^T += x_t^T dG, db += dG. The equations are those of phasedlstm/cells.py (lstm_step,
// peephole_step, phased_step, layernorm_step); tests prove outputs and gradients equal to
// that reference.
//
// Layout: time-major. x (T, B, I); gates (T, B, 4H) (gate order i, f, g, o); w_ih (4H, I),
// bias (4H,) = b_ih + b_hh or empty, w_hh (4H, H), h0 and c0 (B, H),
// peep (3, H) = [w_ci; w_cf; w_co] or empty, k (T, kB, H) time-gate openness (kB = B, or 1
// when all sequences share their timestamps) or empty, lengths (B,) int64 or empty.
// Steps t >= lengths[b] keep the state of sequence b and output zero. With save = false
// (inference) nothing is kept for backward: one step's gates and two state rows per
// sequence are all the memory it needs.
//
// Layer norm (ln_forward / ln_backward): inside the loop
// a = LN_ih(x_t W_ih^T) + LN_hh(h_{t-1} W_hh^T) with gains g_ih, g_hh and shifts b_ih, b_hh,
// and h = o * tanh(LN_c(c)) with gain g_c and shift b_c.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <tuple>
#include <type_traits>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <vector>

using at::Tensor;

namespace {

constexpr double kLnEps = 1e-5;
constexpr double kLnBig = 1099511627776.0;  // 2^40: rows beyond are scaled before normalising

// isfinite that -ffast-math cannot fold away (it lets the compiler assume every value is finite)
template <typename T>
inline bool is_finite_bits(T v) {
  if constexpr (std::is_same_v<T, float>) {
    uint32_t b;
    std::memcpy(&b, &v, sizeof b);
    return (b & 0x7f800000u) != 0x7f800000u;
  } else {
    uint64_t b;
    std::memcpy(&b, &v, sizeof b);
    return (b & 0x7ff0000000000000ull) != 0x7ff0000000000000ull;
  }
}

template <typename T>
inline bool is_nan_bits(T v) {
  if constexpr (std::is_same_v<T, float>) {
    uint32_t b;
    std::memcpy(&b, &v, sizeof b);
    return (b & 0x7fffffffu) > 0x7f800000u;
  } else {
    uint64_t b;
    std::memcpy(&b, &v, sizeof b);
    return (b & 0x7fffffffffffffffull) > 0x7ff0000000000000ull;
  }
}

// The activations, finite and correct over the whole float range. The vectorised exp and tanh
// that -ffast-math lets GCC use (glibc's libmvec) assume finite results: exp(-x) overflowing to
// inf for x < -88 (float) made 1 / (1 + exp(-x)) NaN instead of 0, and tanh of a large argument
// NaN instead of +-1. So the arguments are clamped first, to where the result has already
// saturated to the last bit of the type (sigmoid: 0 below -88 in float32 and -708 in float64, as
// 1 / (1 + inf) is in the reference; 1 above), and tanh(+-20) rounds to +-1 in both. A NaN stays NaN
// (tested by its bits: -ffast-math would fold an ordinary isnan, and lets the clamp drop it).
template <typename T>
inline T clamp_to(T x, T lim) {
  return x < -lim ? -lim : (x > lim ? lim : x);
}

template <typename T>
inline T sigm(T x) {
  // below -lo, exp(-x) overflows and the reference's 1 / (1 + inf) is 0; above hi, sigmoid(x)
  // rounds to 1 (17.33 in float32, 37.43 in float64), which the vector reciprocal that -ffast-math
  // allows would miss by one ulp, and s (1 - s) in the backward would turn that ulp into a gradient
  constexpr bool F = std::is_same_v<T, float>;
  constexpr T lo = F ? T(88) : T(708), hi = F ? T(17.5) : T(37.5);
  const T s = T(1) / (T(1) + std::exp(-clamp_to(x, lo)));
  return is_nan_bits(x) ? x : (x < -lo ? T(0) : (x > hi ? T(1) : s));
}

template <typename T>
inline T tanh_(T x) {
  const T t = std::tanh(clamp_to(x, T(20)));
  return is_nan_bits(x) ? x : t;
}

inline bool present(const Tensor& t) { return t.defined() && t.numel() > 0; }

inline int64_t grain_for(int64_t H) { return std::max<int64_t>(1, 2048 / std::max<int64_t>(H, 1)); }

// ---------------------------------------------------------------------------------------------
// LSTM, peephole LSTM and Phased LSTM
// ---------------------------------------------------------------------------------------------

// One sequence's element-wise work of one step. Separate functions with __restrict
// parameters, so that GCC vectorises the loops (inside the parallel_for lambda it does not).
template <typename scalar_t, bool PEEP, bool PHASED, bool OUT>
static inline void forward_row(scalar_t* __restrict gi, scalar_t* __restrict gf, scalar_t* __restrict gg,
                               scalar_t* __restrict go, const scalar_t* __restrict hp, const scalar_t* __restrict cp,
                               scalar_t* __restrict hn, scalar_t* __restrict cn, scalar_t* __restrict ob,
                               const scalar_t* __restrict wci, const scalar_t* __restrict wcf,
                               const scalar_t* __restrict wco, const scalar_t* __restrict kk, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    scalar_t ai = gi[j], af = gf[j], ao = go[j];
    const scalar_t c_prev = cp[j];
    if (PEEP) {
      ai += wci[j] * c_prev;
      af += wcf[j] * c_prev;
    }
    const scalar_t i = sigm(ai), f = sigm(af), g = tanh_(gg[j]);
    const scalar_t c = f * c_prev + i * g;  // c~_t for the Phased LSTM
    if (PEEP) ao += wco[j] * c;
    const scalar_t o = sigm(ao);
    const scalar_t h = o * tanh_(c);
    gi[j] = i;
    gf[j] = f;
    gg[j] = g;
    go[j] = o;
    scalar_t h_new = h, c_new = c;
    if (PHASED) {  // (c~_t is not kept: the backward recomputes it from the saved gates)
      c_new = kk[j] * c + (1 - kk[j]) * c_prev;
      h_new = kk[j] * h + (1 - kk[j]) * hp[j];
    }
    cn[j] = c_new;
    hn[j] = h_new;
    if (OUT) ob[j] = h_new;  // (without OUT the output is the saved state itself)
  }
}

template <typename scalar_t>
static inline void copy_row(const scalar_t* __restrict a, scalar_t* __restrict b, int64_t n) {
  for (int64_t j = 0; j < n; ++j) b[j] = a[j];
}

template <typename scalar_t>
static inline void zero_row(scalar_t* __restrict a, int64_t n) {
  for (int64_t j = 0; j < n; ++j) a[j] = 0;
}

template <typename scalar_t>
static inline void add_row(const scalar_t* __restrict a, scalar_t* __restrict b, int64_t n) {
  for (int64_t j = 0; j < n; ++j) b[j] += a[j];
}

template <typename scalar_t>
static inline void hold_row(const scalar_t* __restrict hp, const scalar_t* __restrict cp, scalar_t* __restrict hn,
                            scalar_t* __restrict cn, scalar_t* __restrict ob, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    hn[j] = hp[j];
    cn[j] = cp[j];
    ob[j] = 0;
  }
}

// ---------------------------------------------------------------------------------------------
// The recurrent product of one thread's rows: C (M x N) += A (M x K) B, with B packed once
// ---------------------------------------------------------------------------------------------
// Per step the recurrent GEMM is small (M = the thread's sequences, K = H, N = 4H, or the
// transpose in the backward) and runs once per step for thousands of steps, on the same B.
// For float32 we pack B once per call into panels of kNR columns and run a register-blocked
// micro-kernel: with AVX-512 6 rows x 64 columns of accumulators (4 zmm per row), with AVX2 and
// FMA 6 rows x 16 columns (2 ymm per row, 12 of the 16 registers). Elsewhere (float64, CPUs
// with neither) at::addmm_ does it. For small M, MKL's sgemm packs B again at every call, which
// this kernel, on B packed once per call, avoids (figures in docs/speed.md).

#if defined(__AVX512F__)
constexpr int64_t kNR = 64;  // panel width: 4 zmm registers
#else
constexpr int64_t kNR = 16;  // panel width: 2 ymm registers
#endif

struct PackedB {
  Tensor data;  // (panels, K, 64), zero-padded past N
  int64_t K = 0, N = 0;
};

// One operand of the weight-gradient product (gemm_atb_parts below): C += A^T B
struct AtbPart {
  const float* a;  // (K x m), rows of stride lda; nullptr: a row of ones (m = 1)
  int64_t lda, m;
  float* c;  // (m x N), rows of stride ldc
  int64_t ldc;
};

#if defined(__AVX2__)
// 8 rows of src (stride sn) x 8 consecutive values -> 8 rows of d (stride ldd) x 8: an 8 x 8 transpose
static inline void transpose8(const float* __restrict s, int64_t sn, float* __restrict d, int64_t ldd) {
  const __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + sn), r2 = _mm256_loadu_ps(s + 2 * sn),
               r3 = _mm256_loadu_ps(s + 3 * sn), r4 = _mm256_loadu_ps(s + 4 * sn), r5 = _mm256_loadu_ps(s + 5 * sn),
               r6 = _mm256_loadu_ps(s + 6 * sn), r7 = _mm256_loadu_ps(s + 7 * sn);
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
               t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
               t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)),
               u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2)),
               u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)),
               u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2)),
               u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0)),
               u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2)),
               u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0)),
               u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_storeu_ps(d + ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_storeu_ps(d + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_storeu_ps(d + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_storeu_ps(d + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_storeu_ps(d + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_storeu_ps(d + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_storeu_ps(d + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
}
#endif

// Pack B (K x N) where B[k][n] = src[n * sn + k * sk].
inline PackedB pack_b(const Tensor& src, int64_t K, int64_t N, int64_t sk, int64_t sn) {
  PackedB p;
  p.K = K;
  p.N = N;
  const int64_t panels = (N + kNR - 1) / kNR;
  p.data = at::empty({panels, K, kNR}, src.options());  // (every value written below: no zero pass)
  const float* s = src.data_ptr<float>();
  float* d = p.data.data_ptr<float>();
  for (int64_t q = 0; q < panels; ++q) {
    const int64_t nc = std::min(kNR, N - q * kNR);
    int64_t k0 = 0;
#if defined(__AVX2__)
    if (sk == 1 && nc == kNR) {  // rows of W along k: by 8 x 8 transposes (the scalar loop's strided reads were
      // 10% of a forward-only call of T = 8 at H = 1024)
      for (; k0 + 8 <= K; k0 += 8)
        for (int64_t c = 0; c < kNR; c += 8) transpose8(s + (q * kNR + c) * sn + k0, sn, d + (q * K + k0) * kNR + c, kNR);
    }
#endif
    for (int64_t k = k0; k < K; ++k) {
      float* dk = d + (q * K + k) * kNR;
      for (int64_t c = 0; c < nc; ++c) dk[c] = s[(q * kNR + c) * sn + k * sk];
      for (int64_t c = nc; c < kNR; ++c) dk[c] = 0;  // the last panel's padding
    }
  }
  return p;
}

#if defined(__AVX512F__)
constexpr bool kHavePacked = true;

// FULL: all 64 columns valid (plain loads; masked loads are several times slower on some
// CPUs, so only the last, partial panel uses them).
// init: if not null, C is not read; every row starts from init (a bias vector) instead.
template <int MR, bool FULL>
static inline void micro_tile(int64_t K, const float* __restrict A, int64_t lda, const float* __restrict Bp,
                              int64_t ldb, float* __restrict C, int64_t ldc, int64_t ncols,
                              const float* __restrict init, const float* = nullptr) {
  __m512 acc[MR][4];
  __mmask16 mask[4];
  for (int j = 0; j < 4; ++j) {
    const int64_t left = ncols - 16 * j;
    mask[j] = left >= 16 ? (__mmask16)0xFFFF : (left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1));
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < 4; ++j) {
      const float* src = init != nullptr ? init + 16 * j : C + r * ldc + 16 * j;
      acc[r][j] = FULL ? _mm512_loadu_ps(src) : _mm512_maskz_loadu_ps(mask[j], src);
    }
  for (int64_t k = 0; k < K; ++k) {
    const float* b = Bp + k * ldb;  // masked in a partial panel: a row-major B may end inside it
    __m512 b0, b1, b2, b3;
    if (FULL) {
      b0 = _mm512_loadu_ps(b);
      b1 = _mm512_loadu_ps(b + 16);
      b2 = _mm512_loadu_ps(b + 32);
      b3 = _mm512_loadu_ps(b + 48);
    } else {
      b0 = _mm512_maskz_loadu_ps(mask[0], b);
      b1 = _mm512_maskz_loadu_ps(mask[1], b + 16);
      b2 = _mm512_maskz_loadu_ps(mask[2], b + 32);
      b3 = _mm512_maskz_loadu_ps(mask[3], b + 48);
    }
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(A[r * lda + k]);
      acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(a, b2, acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(a, b3, acc[r][3]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < 4; ++j) {
      if (FULL) _mm512_storeu_ps(C + r * ldc + 16 * j, acc[r][j]);
      else _mm512_mask_storeu_ps(C + r * ldc + 16 * j, mask[j], acc[r][j]);
    }
}

#elif defined(__AVX2__) && defined(__FMA__)
constexpr bool kHavePacked = true;

// The AVX2 tile: MR (1-6) rows x 16 columns. The accumulators are named variables, not an array:
// GCC 12 keeps an array of __m256 in memory and stores it at every k, at less than half the
// rate. FULL: all 16 columns valid; otherwise C (and a row-major B, which
// may end inside the panel) are read and written under a mask.
template <int MR, bool FULL>
static inline void micro_tile(int64_t K, const float* __restrict A, int64_t lda, const float* __restrict Bp,
                              int64_t ldb, float* __restrict C, int64_t ldc, int64_t ncols,
                              const float* __restrict init, const float* pf = nullptr) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)ncols), lane);
  const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)ncols - 8), lane);
  auto load = [&](const float* src, int j) {
    return FULL ? _mm256_loadu_ps(src) : _mm256_maskload_ps(src, j == 0 ? m0 : m1);
  };
#define PLSTM_DECL(r)                                                         \
  __m256 c##r##0 = _mm256_setzero_ps(), c##r##1 = _mm256_setzero_ps();        \
  if constexpr (MR > r) {                                                     \
    const float* src = init != nullptr ? init : C + r * ldc;                  \
    c##r##0 = load(src, 0);                                                   \
    c##r##1 = load(src + 8, 1);                                               \
  }
  PLSTM_DECL(0) PLSTM_DECL(1) PLSTM_DECL(2) PLSTM_DECL(3) PLSTM_DECL(4) PLSTM_DECL(5)
#undef PLSTM_DECL
#pragma GCC unroll 4
  for (int64_t k = 0; k < K; ++k) {
    const float* b = Bp + k * ldb;
    if (pf != nullptr) _mm_prefetch(reinterpret_cast<const char*>(pf + k * ldb), _MM_HINT_T0);
    const __m256 b0 = load(b, 0), b1 = load(b + 8, 1);
#define PLSTM_STEP(r)                                          \
  if constexpr (MR > r) {                                      \
    const __m256 a = _mm256_broadcast_ss(A + r * lda + k);     \
    c##r##0 = _mm256_fmadd_ps(a, b0, c##r##0);                 \
    c##r##1 = _mm256_fmadd_ps(a, b1, c##r##1);                 \
  }
    PLSTM_STEP(0) PLSTM_STEP(1) PLSTM_STEP(2) PLSTM_STEP(3) PLSTM_STEP(4) PLSTM_STEP(5)
#undef PLSTM_STEP
  }
#define PLSTM_STORE(r)                                                                           \
  if constexpr (MR > r) {                                                                        \
    if (FULL) {                                                                                  \
      _mm256_storeu_ps(C + r * ldc, c##r##0);                                                    \
      _mm256_storeu_ps(C + r * ldc + 8, c##r##1);                                                \
    } else {                                                                                     \
      _mm256_maskstore_ps(C + r * ldc, m0, c##r##0);                                             \
      _mm256_maskstore_ps(C + r * ldc + 8, m1, c##r##1);                                         \
    }                                                                                            \
  }
  PLSTM_STORE(0) PLSTM_STORE(1) PLSTM_STORE(2) PLSTM_STORE(3) PLSTM_STORE(4) PLSTM_STORE(5)
#undef PLSTM_STORE
}

#endif

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
// (the tiles above, 6 rows at a time, over the panels of B)
// prefetch: K lines of B (stride ldb) fetched into L1 by the second tile of 6 rows (nullptr: none)
template <bool FULL>
inline void micro_rows(int64_t M, int64_t K, const float* A, int64_t lda, const float* bq, int64_t ldb, float* cq,
                       int64_t ldc, int64_t ncols, const float* init, const float* prefetch = nullptr) {
  int64_t m = 0;
  for (; m + 6 <= M; m += 6)
    micro_tile<6, FULL>(K, A + m * lda, lda, bq, ldb, cq + m * ldc, ldc, ncols, init, m == 6 ? prefetch : nullptr);
  switch (M - m) {
    case 5: micro_tile<5, FULL>(K, A + m * lda, lda, bq, ldb, cq + m * ldc, ldc, ncols, init); break;
    case 4: micro_tile<4, FULL>(K, A + m * lda, lda, bq, ldb, cq + m * ldc, ldc, ncols, init); break;
    case 3: micro_tile<3, FULL>(K, A + m * lda, lda, bq, ldb, cq + m * ldc, ldc, ncols, init); break;
    case 2: micro_tile<2, FULL>(K, A + m * lda, lda, bq, ldb, cq + m * ldc, ldc, ncols, init); break;
    case 1: micro_tile<1, FULL>(K, A + m * lda, lda, bq, ldb, cq + m * ldc, ldc, ncols, init); break;
    default: break;
  }
}

// C (M x N) += A (M x K) B (K x N); B is packed (panel_stride = K * kNR, ldb = kNR) or row-major
// (panel_stride = kNR, ldb = its row stride). Rows of A and C have strides lda and ldc. With
// init (an N-vector), C = init + A B instead: C is written, never read.
inline void gemm_acc_any(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* Bq0,
                         int64_t panel_stride, int64_t ldb, float* C, int64_t ldc, const float* init = nullptr,
                         int64_t kblock = 0) {
  const int64_t panels = (N + kNR - 1) / kNR;
  // by blocks of K rows only where asked (see UnitPacks) and B is packed; otherwise one block of all K
  const bool blocked = kblock > 0 && M > 6 && panel_stride == K * kNR && ldb == kNR;
  const int64_t kstep = blocked ? kblock : std::max<int64_t>(K, 1);
  for (int64_t q = 0; q < panels; ++q) {
    const float* bq = Bq0 + q * panel_stride;
    const int64_t ncols = std::min(kNR, N - q * kNR);
    float* cq = C + q * kNR;
    for (int64_t k0 = 0; k0 == 0 || k0 < K; k0 += kstep) {
      const int64_t kb = std::min(kstep, K - k0);
      // the lines of the next block of B (this panel's next rows of K, or the next panel's first),
      // fetched while the second tile of rows reads this block from cache
      const float* next =
          !blocked ? nullptr : (k0 + kb < K ? bq + (k0 + kb) * kNR : (q + 1 < panels ? bq + panel_stride : nullptr));
      const float* iq = init != nullptr && k0 == 0 ? init + q * kNR : nullptr;
      if (ncols == kNR) micro_rows<true>(M, kb, A + k0, lda, bq + k0 * ldb, ldb, cq, ldc, ncols, iq, next);
      else micro_rows<false>(M, kb, A + k0, lda, bq + k0 * ldb, ldb, cq, ldc, ncols, iq, next);
    }
  }
}

inline void gemm_acc(int64_t M, const float* A, int64_t lda, const PackedB& B, float* C, int64_t ldc,
                     const float* init = nullptr, int64_t kblock = 0) {
  gemm_acc_any(M, B.N, B.K, A, lda, B.data.data_ptr<float>(), B.K * kNR, kNR, C, ldc, init, kblock);
}

// The weight gradients over all steps: C_p (M_p x N) += A_p^T B for a few parts p at once, with
// A_p (K x M_p) and B (K x N) row-major (K = T * B rows: for example h_{t-1} and dG of every step;
// a part without A is a row of ones, so its C row gets the column sums of B: the bias gradient).
// B is the large operand (dG: K x 4H), read once for all parts. Per chunk of K rows the threads
// pack B into panels (K x kNR, read from L2 by the tiles) and the parts' A transposed (rows of K,
// streamed), then split the panels, each tile summing over the whole chunk in registers (C loaded
// and stored once per chunk, not per block of K).
inline void gemm_atb_parts(int64_t N, int64_t K, const float* B, int64_t ldb, const std::vector<AtbPart>& parts,
                           int64_t chunk = 0) {
  const int64_t panels = (N + kNR - 1) / kNR;
  int64_t mt = 0;
  for (const auto& p : parts) mt += p.m;
  // chunks of K: packed B at most 16 MiB (4 Mi floats over panels * kNR per row) but at least 256 rows
  // (so more where 4H > 4096), rows a multiple of 8
  const int64_t kch = chunk > 0 ? chunk : std::max<int64_t>(256, (int64_t(4) << 20) / (panels * kNR) / 8 * 8);
  const int64_t kmax = std::min(K, kch);
  // (buffers kept by the calling thread between calls: a fresh 16 MiB allocation is mapped and
  // faulted in page by page at every call, which cost more than the packing itself)
  static thread_local std::vector<float> bp_keep, ap_keep;
  if (bp_keep.size() < size_t(panels * kmax * kNR)) bp_keep.resize(panels * kmax * kNR);
  if (ap_keep.size() < size_t(mt * kmax)) ap_keep.resize(mt * kmax);
  float* const bpd = bp_keep.data();
  float* const apd = ap_keep.data();
  for (int64_t k0 = 0; k0 < K; k0 += kch) {
    const int64_t kc = std::min(kch, K - k0);
    at::parallel_for(0, (kc + 7) / 8, 1, [&](int64_t e0, int64_t e1) {  // packing, by groups of 8 rows of K
      for (int64_t e = e0; e < e1; ++e) {
        const int64_t ka = e * 8, kb = std::min(kc, ka + 8);
        for (int64_t k = ka; k < kb; ++k)
          for (int64_t q = 0; q < panels; ++q) {
            const int64_t nc = std::min(kNR, N - q * kNR);
            float* d = bpd + (q * kc + k) * kNR;
            std::memcpy(d, B + (k0 + k) * ldb + q * kNR, nc * sizeof(float));
            for (int64_t c = nc; c < kNR; ++c) d[c] = 0;
          }
        int64_t row = 0;  // ap[row][k] = A_p[k0 + k][m]
        for (const auto& p : parts) {
          float* d = apd + row * kc;
          if (p.a == nullptr) {
            std::fill(d + ka, d + kb, 1.0f);
          } else {
            int64_t m = 0;
#if defined(__AVX2__)
            if (kb - ka == 8)
              for (; m + 8 <= p.m; m += 8) transpose8(p.a + (k0 + ka) * p.lda + m, p.lda, d + m * kc + ka, kc);
#endif
            for (; m < p.m; ++m)
              for (int64_t k = ka; k < kb; ++k) d[m * kc + k] = p.a[(k0 + k) * p.lda + m];
          }
          row += p.m;
        }
      }
    });
    at::parallel_for(0, panels, 1, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t nc = std::min(kNR, N - q * kNR);
        const float* bq = bpd + q * kc * kNR;
        int64_t row = 0;
        for (const auto& p : parts) {
          const float* a = apd + row * kc;
          if (nc == kNR) micro_rows<true>(p.m, kc, a, kc, bq, kNR, p.c + q * kNR, p.ldc, nc, nullptr);
          else micro_rows<false>(p.m, kc, a, kc, bq, kNR, p.c + q * kNR, p.ldc, nc, nullptr);
          row += p.m;
        }
      }
    });
  }
}

// PHASEDLSTM_ATB=0: the weight gradients over all steps with at::addmm_ (MKL) instead (A/B, tests)
inline bool atb_enabled() {
  const char* e = std::getenv("PHASEDLSTM_ATB");
  return e == nullptr || std::strcmp(e, "0") != 0;
}
#else
constexpr bool kHavePacked = false;
inline void gemm_acc(int64_t, const float*, int64_t, const PackedB&, float*, int64_t, const float* = nullptr,
                     int64_t = 0) {}
inline void gemm_acc_any(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, int64_t, float*,
                         int64_t, const float* = nullptr, int64_t = 0) {}
inline void gemm_atb_parts(int64_t, int64_t, const float*, int64_t, const std::vector<AtbPart>&, int64_t = 0) {}
inline bool atb_enabled() { return false; }
#endif

// PHASEDLSTM_PACKED=0 switches the micro-kernel off (at::addmm_ for every product): the tests run
// both paths, the benchmarks compare them.
inline bool packed_enabled() {
  const char* e = std::getenv("PHASEDLSTM_PACKED");
  return e == nullptr || std::strcmp(e, "0") != 0;
}

// C += A B for 2-D tensors whose rows are contiguous (inner stride 1), on this thread.
template <typename scalar_t>
inline void acc_ab(Tensor C, const Tensor& A, const Tensor& B) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    // (not on AVX2: there the weight gradients' products, on a row-major dG that is not packed,
    // were slower than MKL's: (256, 100, 32, 256) LSTM training 0.77x -> 0.94x torch.nn.LSTM)
    if (kHavePacked && kNR == 64 && packed_enabled()) {
      gemm_acc_any(A.size(0), B.size(1), A.size(1), A.data_ptr<float>(), A.stride(0), B.data_ptr<float>(), kNR,
                   B.stride(0), C.data_ptr<float>(), C.stride(0));
      return;
    }
  }
  C.addmm_(A, B);
}

// The weight gradients over all steps, at the end of a backward (outside parallel regions: it
// parallelises itself): for each (A, C) of parts, C += A^T B, or C += the column sums of B where A
// is undefined (a bias). A (K x M), B (K x N) and C with contiguous rows.
template <typename scalar_t>
inline void acc_atb(const Tensor& B, const std::vector<std::pair<Tensor, Tensor>>& parts, int64_t chunk = 0) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (kHavePacked && packed_enabled() && atb_enabled() && B.stride(1) == 1) {
      std::vector<AtbPart> ps;
      for (const auto& part : parts) {
        const Tensor &a = part.first, &c = part.second;
        TORCH_CHECK(c.stride(-1) == 1 && (!a.defined() || a.stride(1) == 1), "acc_atb: rows must be contiguous");
        if (a.defined()) ps.push_back({a.data_ptr<float>(), a.stride(0), a.size(1), c.data_ptr<float>(), c.stride(0)});
        else ps.push_back({nullptr, 0, 1, c.data_ptr<float>(), 0});
      }
      gemm_atb_parts(B.size(1), B.size(0), B.data_ptr<float>(), B.stride(0), ps, chunk);
      return;
    }
  }
  for (const auto& part : parts) {
    Tensor c = part.second;
    if (part.first.defined()) c.addmm_(part.first.t(), B);
    else c.add_(B.sum(0));
  }
}

// dst (n x m) = src (m x n)^T, src rows of stride lds
template <typename scalar_t>
inline void transpose_into(const scalar_t* src, int64_t m, int64_t n, int64_t lds, scalar_t* dst) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) dst[j * m + i] = src[i * lds + j];
}

// The recurrent product for this thread's rows: out_rows (M x N) += in_rows (M x K) B, where B
// is W_hh^T (forward: K = H, N = 4H) or W_hh (backward: K = 4H, N = H).
struct Recurrent {
  Tensor b_for_aten;  // what at::addmm_ multiplies by
  PackedB packed;
  Tensor zeros;  // (N, float32) with the packed kernel: set() writes 0 + A B, without a zeroing pass first
  bool use_packed = false;

  // Whether the micro-kernel serves this product: float32 on AVX-512 or AVX2, and N >= kNR
  // (narrower products, e.g. dx = dG W_ih for a few input features, waste most of a panel and
  // stay with at::addmm_).
  static bool packable(const Tensor& w, bool transpose) {
    return kHavePacked && w.scalar_type() == at::kFloat && (transpose ? w.size(0) : w.size(1)) >= kNR && packed_enabled();
  }

  // pack = false: never pack (the caller multiplies by W some other way on the packed path)
  Recurrent(const Tensor& w_hh, bool transpose, bool pack = true) {
    // (detached: grad mode is per thread, and a worker's product with a weight that requires grad
    // would be tracked, or refused by the out= variant)
    b_for_aten = (transpose ? w_hh.t() : w_hh).detach();
    use_packed = pack && packable(w_hh, transpose);
    if (use_packed) {
      const int64_t R = w_hh.size(0), Cc = w_hh.size(1);  // (4H, H), row-major
      // transpose: B = W^T, B[k][n] = W[n][k] (K = H, N = 4H); else B = W, B[k][n] = W[k][n]
      packed = transpose ? pack_b(w_hh, Cc, R, /*sk=*/1, /*sn=*/Cc) : pack_b(w_hh, R, Cc, /*sk=*/Cc, /*sn=*/1);
      zeros = at::zeros({packed.N}, w_hh.options());
    }
  }

  template <typename scalar_t>
  void acc(Tensor out_rows, const Tensor& in_rows) const {  // rows are contiguous (row strides K and N)
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (use_packed) {
        gemm_acc(in_rows.size(0), in_rows.data_ptr<float>(), in_rows.stride(0), packed, out_rows.data_ptr<float>(),
                 out_rows.stride(0));
        return;
      }
    }
    out_rows.addmm_(in_rows, b_for_aten);
  }

  template <typename scalar_t>
  void set(Tensor out_rows, const Tensor& in_rows) const {  // out_rows = in_rows B (no zeroing pass first)
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (use_packed) {
        gemm_acc(in_rows.size(0), in_rows.data_ptr<float>(), in_rows.stride(0), packed, out_rows.data_ptr<float>(),
                 out_rows.stride(0), zeros.data_ptr<float>());
        return;
      }
    }
    at::mm_out(out_rows, in_rows, b_for_aten);
  }
};

// Sequences of different lengths: once a quarter or more of a thread's rows have ended, the
// per-step products run on the rows still running only (gathered into a compact block, the
// results scattered back), instead of multiplying ended rows whose results are thrown away.
// The lengths of a batch of the frequency tasks are uniform over a range (the high-resolution
// one: 150-1250 steps), so about 40% of the products of a step loop are on ended rows.
// PHASEDLSTM_RUNNING_ROWS=0 switches it off (benchmarks: scripts/bench_lengths.py).
inline bool running_rows_enabled() {
  const char* e = std::getenv("PHASEDLSTM_RUNNING_ROWS");
  return e == nullptr || std::strcmp(e, "0") != 0;
}

// rows: the thread's rows b (global indices) with t < len[b]; returns whether to compact.
inline bool running_rows(const int64_t* len, int64_t t, int64_t b0, int64_t b1, std::vector<int64_t>& rows) {
  if (len == nullptr) return false;
  rows.clear();
  for (int64_t b = b0; b < b1; ++b)
    if (t < len[b]) rows.push_back(b);
  return int64_t(rows.size()) * 4 <= (b1 - b0) * 3;
}

template <typename scalar_t>
inline void gather_rows(const scalar_t* src, int64_t lds, const std::vector<int64_t>& rows, int64_t off, int64_t n,
                        scalar_t* dst) {  // dst row i = src row (rows[i] - off), n values each
  for (size_t i = 0; i < rows.size(); ++i) copy_row(src + (rows[i] - off) * lds, dst + i * n, n);
}

template <typename scalar_t>
inline void scatter_rows(const scalar_t* src, const std::vector<int64_t>& rows, int64_t off, int64_t n, scalar_t* dst,
                         int64_t ldd) {  // dst row (rows[i] - off) = src row i
  for (size_t i = 0; i < rows.size(); ++i) copy_row(src + i * n, dst + (rows[i] - off) * ldd, n);
}

// Inference computes the input terms of a chunk of steps at a time: about 2^18 gate values (1 MiB
// in float32) per chunk, so long sequences need no (T, B, 4H) buffer.
inline int64_t infer_chunk(int64_t T, int64_t BH) {
  return std::max<int64_t>(1, std::min<int64_t>(T, (int64_t(1) << 18) / (4 * BH) + 1));
}

// Parallel over the batch, serial over time: each thread runs the whole time loop for its own
// block of sequences (rows never interact), so there is no fork/join per step. Inside, the
// per-step GEMM runs single-threaded on the thread's rows.
inline int64_t batch_grain(int64_t B) {
  const int64_t n = std::max<int64_t>(1, at::get_num_threads());
  return std::max<int64_t>(1, (B + n - 1) / n);
}

// Split over units instead of sequences, for few sequences and a large W_hh: with the batch
// split every thread streams all of W_hh (16 H^2 bytes in float32) through its cache every step;
// here each thread multiplies by its own block of W_hh's rows (the four gates of its units) and
// updates those units, at the price of a fork/join per step (the next step needs every unit's
// h). PHASEDLSTM_SPLIT=units or =batch forces one of them (for tests and benchmarks).
// packed_infer: the inference forward of the LSTM, peephole or Phased LSTM with the micro-kernel
// (float32, AVX2 or AVX-512), whose batch split multiplies [x_t | h_{t-1}] by packed panels of W
// and keeps up to a larger W_hh.
inline bool split_units(int64_t B, int64_t H, bool packed_infer = false) {
  const char* e = std::getenv("PHASEDLSTM_SPLIT");
  if (e != nullptr && std::strcmp(e, "units") == 0) return true;
  if (e != nullptr && std::strcmp(e, "batch") == 0) return false;
  const int64_t nt = at::get_num_threads();
  // The thresholds are where the unit split measured faster than the batch split on 2 cores (the
  // figures are in docs/speed.md): forward-only with the packed kernel from H = 768 at up to 8
  // sequences per thread; otherwise from H = 512 at up to 16.
  if (packed_infer) return nt > 1 && H >= 768 && B <= 8 * nt;
  return nt > 1 && H >= 512 && B <= 16 * nt;
}

// The unit blocks of the unit split: one per thread, multiples of 16 units
inline int64_t unit_block(int64_t H) {
  const int64_t nt = std::max<int64_t>(1, at::get_num_threads());
  return std::min(H, ((H + nt - 1) / nt + 15) / 16 * 16);
}

// The unit split's blocks of W_hh packed once per call for the micro-kernel. Forward: for each
// unit block q and gate, B = (the block's rows of that gate)^T, K = H, N = the block's units.
// Backward: for each block, B = W_hh's columns of the block's units, K = 4H, N = its units
// (dh_{t-1} += dG_t W_hh by columns of dh). The per-step products then read W_hh panel by panel
// instead of through at::addmm, which for these few rows (M = B <= 32) packs its B again at every
// call. Not for short sequences (packing costs about one step's product) nor float64.
// Each block of W_hh (H = 1024: 8 MiB per thread) is larger than a core's L2, so every step
// streams it from L3, and with the 6-row tiles the first tile of rows waits on that stream while
// the others re-read the panel from L2. The products here therefore run by blocks of kUnitKBlock
// rows of K (a panel's block stays in L1 for all tiles of rows) and prefetch the next block during
// the second tile (prefetches past the end of the data are harmless: they never fault). Not for the
// batch split's products, whose blocks of W stay in L2 and where it measured slower (docs/speed.md).
// PHASEDLSTM_KBLOCK=0 switches it off (benchmarks), =N sets the block.
constexpr int64_t kUnitKBlock = 128;

struct UnitPacks {
  std::vector<PackedB> p;
  Tensor zeros;  // the starting sums of set()
  int64_t kblock = kUnitKBlock;

  UnitPacks(const Tensor& w_hh, int64_t T, bool backward = false) {
    if (T < 8 || !Recurrent::packable(w_hh, /*transpose=*/true)) return;
    const char* e = std::getenv("PHASEDLSTM_KBLOCK");
    if (e != nullptr) kblock = std::max<int64_t>(0, std::atoll(e));
    const int64_t H = w_hh.size(1), blk = unit_block(H), nb = (H + blk - 1) / blk, per = backward ? 1 : 4;
    const Tensor W = w_hh.detach().contiguous();
    p.resize(per * nb);
    zeros = at::zeros({blk}, W.options());
    at::parallel_for(0, per * nb, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t q = i / per, gate = i % per, u0 = q * blk, hb = std::min(blk, H - u0);
        p[i] = backward ? pack_b(W.narrow(1, u0, hb), /*K=*/4 * H, /*N=*/hb, /*sk=*/H, /*sn=*/1)
                        : pack_b(W.narrow(0, gate * H + u0, hb), /*K=*/H, /*N=*/hb, /*sk=*/1, /*sn=*/H);
      }
    });
  }
  bool on() const { return !p.empty(); }
  // out (M rows of stride ldc) += in (M x K, rows of stride lda) times pack i (forward: 4 q + gate;
  // backward: q); with set, out = that product (not read)
  void acc(int64_t i, int64_t M, const float* in, int64_t lda, float* out, int64_t ldc, bool set = false) const {
    gemm_acc(M, in, lda, p[i], out, ldc, set ? zeros.data_ptr<float>() : nullptr, kblock);
  }
};

// The unit split's backward product dh_{t-1} += dG_t W_hh (dg: (B, 4H), dhprev: (B, H), both
// contiguous), by columns of dh: each thread its units' columns of W_hh (packed in up, or W).
template <typename scalar_t>
void units_dh_product(Tensor& dhprev, const Tensor& dg, const Tensor& W, const UnitPacks& up) {
  const int64_t B = dhprev.size(0), H = dhprev.size(1), blk = unit_block(H), nb = (H + blk - 1) / blk;
  at::parallel_for(0, nb, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t u0 = q * blk, hb = std::min(blk, H - u0);
      if constexpr (std::is_same_v<scalar_t, float>) {
        if (up.on()) {
          up.acc(q, B, dg.data_ptr<float>(), 4 * H, dhprev.data_ptr<float>() + u0, H);
          continue;
        }
      }
      dhprev.narrow(1, u0, hb).addmm_(dg, W.narrow(1, u0, hb));
    }
  });
}

// Steps t0 .. t0+n-1 of the unit split (gbuf[slot] holds x_t W_ih^T + b): per step, each thread
// its block of units: + h_{t-1} W_hh^T on its units' columns of the four gates, then their update.
template <typename scalar_t, bool PEEP, bool PHASED, bool OUT>
void units_steps(Tensor& gbuf, Tensor& hbuf, Tensor& cbuf, const Tensor& W, const UnitPacks& up, const scalar_t* K,
                 int64_t kB, const scalar_t* wci, scalar_t* O, const int64_t* len, bool save, int64_t t0, int64_t n) {
  const int64_t B = hbuf.size(1), H = hbuf.size(2), BH = B * H;
  const int64_t blk = unit_block(H), nb = (H + blk - 1) / blk;
  scalar_t* HS = hbuf.data_ptr<scalar_t>();
  scalar_t* CS = cbuf.data_ptr<scalar_t>();
  for (int64_t t = t0; t < t0 + n; ++t) {
    const int64_t slot = save ? t : t - t0;
    const int64_t sp = save ? t : t % 2, sn = save ? t + 1 : (t + 1) % 2;
    Tensor gates = gbuf[slot];
    const Tensor hprev = hbuf[sp];
    scalar_t* G = gates.data_ptr<scalar_t>();
    at::parallel_for(0, nb, 1, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t u0 = q * blk, hb = std::min(blk, H - u0);
        for (int64_t gate = 0; gate < 4; ++gate) {  // + h_{t-1} W_hh^T, this block's columns of each gate
          if constexpr (std::is_same_v<scalar_t, float>) {
            if (up.on()) {
              up.acc(4 * q + gate, B, hprev.data_ptr<float>(), H, G + gate * H + u0, 4 * H);
              continue;
            }
          }
          gates.narrow(1, gate * H + u0, hb).addmm_(hprev, W.narrow(0, gate * H + u0, hb).t());
        }
        for (int64_t b = 0; b < B; ++b) {
          const int64_t r = b * H + u0;
          scalar_t* g = G + 4 * b * H + u0;
          scalar_t *hp = HS + sp * BH + r, *cp = CS + sp * BH + r, *hn = HS + sn * BH + r, *cn = CS + sn * BH + r;
          if (len != nullptr && t >= len[b]) {  // (lengths imply OUT)
            hold_row(hp, cp, hn, cn, O + t * BH + r, hb);
            continue;
          }
          const scalar_t* kk = PHASED ? K + t * kB * H + (kB == 1 ? u0 : r) : nullptr;
          forward_row<scalar_t, PEEP, PHASED, OUT>(g, g + H, g + 2 * H, g + 3 * H, hp, cp, hn, cn,
                                                   OUT ? O + t * BH + r : nullptr, PEEP ? wci + u0 : nullptr,
                                                   PEEP ? wci + H + u0 : nullptr, PEEP ? wci + 2 * H + u0 : nullptr,
                                                   kk, hb);
        }
      }
    });
  }
}

template <typename scalar_t, bool PEEP, bool PHASED, bool OUT>
void forward_loop(const Tensor& x, const Tensor& w_ih, const Tensor& bias, const Tensor& w_hh, const Tensor& h0,
                  const Tensor& c0, const Tensor& peep, const Tensor& k, const int64_t* len, bool save, bool units,
                  Tensor& acts, Tensor& hs, Tensor& cs, Tensor& out) {
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(1), BH = B * H;
  const int64_t kB = PHASED ? k.size(1) : 0;
  const Tensor w_ih_t = w_ih.t();
  // With the packed kernel the input projection is done per step inside the loop too, in the
  // same GEMM as the recurrent product: [x_t | h_{t-1}] (K = I + H) times [W_ih | W_hh]^T packed
  // together. No separate large GEMM, one pass over the gate rows, and they stay in cache.
  const bool fused_in = !units && Recurrent::packable(w_hh, /*transpose=*/true);
  const int64_t* run_len = running_rows_enabled() ? len : nullptr;  // (products on the running rows)
  const Recurrent rec(w_hh, /*transpose=*/true, /*pack=*/!fused_in && !units);  // (batch split without fused_in)
  // (grad mode is per thread: a worker's view of a weight that requires grad would be tracked)
  const Tensor W = units ? w_hh.detach() : Tensor();
  const UnitPacks up(units ? w_hh : Tensor(), units ? T : 0);
  PackedB cat;
  if (fused_in) {
    const Tensor w_cat = at::cat({w_ih, w_hh}, 1).contiguous();  // (4H, I + H)
    cat = pack_b(w_cat, I + H, 4 * H, /*sk=*/1, /*sn=*/I + H);
  }
  const scalar_t* wci = PEEP ? peep.data_ptr<scalar_t>() : nullptr;
  const scalar_t* wcf = PEEP ? wci + H : nullptr;
  const scalar_t* wco = PEEP ? wci + 2 * H : nullptr;
  const scalar_t* K = PHASED ? k.data_ptr<scalar_t>() : nullptr;
  const Tensor bias_vec = fused_in ? (bias.numel() > 0 ? bias.contiguous() : at::zeros({4 * H}, x.options())) : bias;
  const float* bias_or_zero = fused_in ? reinterpret_cast<const float*>(bias_vec.data_ptr()) : nullptr;
  scalar_t* O = OUT ? out.data_ptr<scalar_t>() : nullptr;
  // training: gates and states of every step are kept; inference: the gates of a chunk of
  // steps (one step's when the projection is fused), and two state rows (ping-pong)
  const int64_t chunk = save || fused_in ? T : infer_chunk(T, BH);
  Tensor gbuf = save ? acts : at::empty({fused_in ? 1 : chunk, B, 4 * H}, x.options());
  Tensor hbuf = save ? hs : at::empty({2, B, H}, x.options());
  Tensor cbuf = save ? cs : at::empty({2, B, H}, x.options());
  hbuf[0].copy_(h0);
  cbuf[0].copy_(c0);
  scalar_t* HS = hbuf.data_ptr<scalar_t>();
  scalar_t* CS = cbuf.data_ptr<scalar_t>();
  for (int64_t t0 = 0; t0 < T; t0 += chunk) {
    const int64_t n = std::min(chunk, T - t0);
    if (!fused_in) {  // input projection of steps t0 .. t0+n-1 in one (multi-threaded) GEMM
      Tensor g2 = gbuf.narrow(0, save ? t0 : 0, n).view({n * B, 4 * H});
      const Tensor x2 = x.narrow(0, t0, n).reshape({n * B, I});
      if (bias.numel() > 0) at::addmm_out(g2, bias, x2, w_ih_t);
      else at::mm_out(g2, x2, w_ih_t);
    }
    if (units) {
      units_steps<scalar_t, PEEP, PHASED, OUT>(gbuf, hbuf, cbuf, W, up, K, kB, wci, O, len, save, t0, n);
      continue;
    }
    at::parallel_for(0, B, batch_grain(B), [&](int64_t b0, int64_t b1) {
      const int64_t Bt = b1 - b0;
      std::vector<scalar_t> xh(fused_in ? Bt * (I + H) : 0);  // [x_t | h_{t-1}] of this thread's rows
      const scalar_t* X = x.data_ptr<scalar_t>();
      std::vector<int64_t> rows;  // the rows still running (with lengths)
      Tensor hc, gc;  // their h_{t-1} and gate rows, compacted (allocated when first needed)
      for (int64_t t = t0; t < t0 + n; ++t) {
        const int64_t slot = save ? t : (fused_in ? 0 : t - t0);
        const int64_t sp = save ? t : t % 2, sn = save ? t + 1 : (t + 1) % 2;  // state rows: previous, next
        Tensor gates = gbuf[slot].narrow(0, b0, Bt);
        scalar_t* G = gates.data_ptr<scalar_t>();
        const bool compact = running_rows(run_len, t, b0, b1, rows);
        const int64_t m = compact ? int64_t(rows.size()) : Bt;
        if (compact && !gc.defined()) {
          hc = at::empty({Bt, H}, x.options());
          gc = at::empty({Bt, 4 * H}, x.options());
        }
        if constexpr (std::is_same_v<scalar_t, float>) {
          if (fused_in) {  // gates = b + [x_t | h_{t-1}] [W_ih | W_hh]^T, this thread's (running) rows
            for (int64_t i = 0; i < m; ++i) {
              const int64_t b = compact ? rows[i] : b0 + i;
              copy_row(X + (t * B + b) * I, xh.data() + i * (I + H), I);
              copy_row(HS + sp * BH + b * H, xh.data() + i * (I + H) + I, H);
            }
            if (!compact) gemm_acc(Bt, xh.data(), I + H, cat, G, 4 * H, bias_or_zero);  // the bias starts the sums
            else if (m > 0) {
              gemm_acc(m, xh.data(), I + H, cat, gc.data_ptr<float>(), 4 * H, bias_or_zero);
              scatter_rows(gc.data_ptr<float>(), rows, b0, 4 * H, G, 4 * H);
            }
          }
        }
        if (!fused_in && !compact) rec.acc<scalar_t>(gates, hbuf[sp].narrow(0, b0, Bt));  // + h_{t-1} W_hh^T
        if (!fused_in && compact && m > 0) {  // the same on the running rows
          gather_rows(HS + sp * BH, H, rows, 0, H, hc.data_ptr<scalar_t>());
          gather_rows(G, 4 * H, rows, b0, 4 * H, gc.data_ptr<scalar_t>());
          rec.acc<scalar_t>(gc.narrow(0, 0, m), hc.narrow(0, 0, m));
          scatter_rows(gc.data_ptr<scalar_t>(), rows, b0, 4 * H, G, 4 * H);
        }
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t r = b * H;
          scalar_t* g = G + 4 * (b - b0) * H;
          scalar_t *hp = HS + sp * BH + r, *cp = CS + sp * BH + r, *hn = HS + sn * BH + r, *cn = CS + sn * BH + r;
          if (len != nullptr && t >= len[b]) {  // past the end: state unchanged, output zero
            hold_row(hp, cp, hn, cn, O + t * BH + r, H);
            continue;
          }
          const scalar_t* kk = PHASED ? K + t * kB * H + (kB == 1 ? 0 : r) : nullptr;
          forward_row<scalar_t, PEEP, PHASED, OUT>(g, g + H, g + 2 * H, g + 3 * H, hp, cp, hn, cn,
                                                   OUT ? O + t * BH + r : nullptr, wci, wcf, wco, kk, H);
        }
      }
    });
  }
  if (!save) {  // the final state, where the caller expects it
    hs.copy_(hbuf[T % 2]);
    cs.copy_(cbuf[T % 2]);
  }
}

std::vector<Tensor> lstm_forward(const Tensor& x, const Tensor& w_ih, const Tensor& bias, const Tensor& w_hh,
                                 const Tensor& h0, const Tensor& c0, const Tensor& peep, const Tensor& k,
                                 const Tensor& lengths, bool save) {
  TORCH_CHECK(x.dim() == 3, "x must be (T, B, I)");
  const int64_t T = x.size(0), B = x.size(1), H = w_hh.size(1);
  TORCH_CHECK(w_ih.size(0) == 4 * H && w_hh.size(0) == 4 * H && w_ih.size(1) == x.size(2), "weights do not fit");
  auto opts = x.options();
  const bool peephole = present(peep), phased = present(k);
  Tensor acts = save ? at::empty({T, B, 4 * H}, opts) : at::empty({0}, opts);
  // saved states: hs[0] = h0, hs[t + 1] = h_t; in inference only the final state (B, H)
  Tensor hs = save ? at::empty({T + 1, B, H}, opts) : at::empty({B, H}, opts);
  Tensor cs = save ? at::empty({T + 1, B, H}, opts) : at::empty({B, H}, opts);
  // training without lengths: the output is the saved states h_1..h_T themselves
  const bool own_out = !save || present(lengths);
  Tensor out = own_out ? at::empty({T, B, H}, opts) : hs.narrow(0, 1, T);
  const Tensor xc = x.contiguous(), wi = w_ih.contiguous(), w = w_hh.contiguous();
  const Tensor pp = peephole ? peep.contiguous() : peep;
  const Tensor kk = phased ? k.contiguous() : k;
  const int64_t* len = present(lengths) ? lengths.data_ptr<int64_t>() : nullptr;
  const bool units = split_units(B, H, /*packed_infer=*/!save && Recurrent::packable(w, /*transpose=*/true));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_forward", [&] {
    auto run = [&](auto peep_flag, auto phased_flag) {
      constexpr bool P = decltype(peep_flag)::value, Q = decltype(phased_flag)::value;
      if (own_out) forward_loop<scalar_t, P, Q, true>(xc, wi, bias, w, h0, c0, pp, kk, len, save, units, acts, hs, cs, out);
      else forward_loop<scalar_t, P, Q, false>(xc, wi, bias, w, h0, c0, pp, kk, len, save, units, acts, hs, cs, out);
    };
    using Y = std::true_type;
    using N = std::false_type;
    if (phased && peephole) run(Y{}, Y{});
    else if (phased) run(N{}, Y{});
    else if (peephole) run(Y{}, N{});
    else run(N{}, N{});
  });
  Tensor hn = save ? hs[T].clone() : hs, cn = save ? cs[T].clone() : cs;
  return {out, hn, cn, acts, hs, cs};
}

template <typename scalar_t, bool PEEP, bool PHASED>
static inline void backward_row(const scalar_t* __restrict gi, const scalar_t* __restrict gf,
                                const scalar_t* __restrict gg, const scalar_t* __restrict go,
                                const scalar_t* __restrict dh, const scalar_t* __restrict dc,
                                const scalar_t* __restrict gout, const scalar_t* __restrict hp,
                                const scalar_t* __restrict cp, const scalar_t* __restrict cn,
                                const scalar_t* __restrict kk,
                                const scalar_t* __restrict wci, const scalar_t* __restrict wcf,
                                const scalar_t* __restrict wco, scalar_t* __restrict dai_, scalar_t* __restrict daf_,
                                scalar_t* __restrict dag_, scalar_t* __restrict dao_, scalar_t* __restrict dhp,
                                scalar_t* __restrict dcp, scalar_t* __restrict dk, scalar_t* __restrict acc_i,
                                scalar_t* __restrict acc_f, scalar_t* __restrict acc_o, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t dht = dh[j] + gout[j];
    const scalar_t dct = dc[j];
    const scalar_t i = gi[j], f = gf[j], g = gg[j], o = go[j];
    const scalar_t c_prev = cp[j];
    const scalar_t c = PHASED ? f * c_prev + i * g : cn[j];  // c~_t (recomputed for the Phased LSTM)
    const scalar_t tc = tanh_(c);
    scalar_t dh_til = dht, dc_til = dct, dh_p = 0, dc_p = 0;
    if (PHASED) {
      dk[j] += dht * (o * tc - hp[j]) + dct * (c - c_prev);  // accumulates: dk is shared when kB == 1
      dh_til = kk[j] * dht;
      dc_til = kk[j] * dct;
      dh_p = (1 - kk[j]) * dht;
      dc_p = (1 - kk[j]) * dct;
    }
    const scalar_t dao = dh_til * tc * o * (1 - o);
    dc_til += dh_til * o * (1 - tc * tc);
    if (PEEP) dc_til += dao * wco[j];
    const scalar_t dai = dc_til * g * i * (1 - i);
    const scalar_t daf = dc_til * c_prev * f * (1 - f);
    const scalar_t dag = dc_til * i * (1 - g * g);
    dc_p += dc_til * f;
    if (PEEP) {
      dc_p += dai * wci[j] + daf * wcf[j];
      acc_i[j] += dai * c_prev;
      acc_f[j] += daf * c_prev;
      acc_o[j] += dao * c;
    }
    dai_[j] = dai;
    daf_[j] = daf;
    dag_[j] = dag;
    dao_[j] = dao;
    dhp[j] = dh_p;
    dcp[j] = dc_p;
  }
}

// past the end: the state passed through unchanged; the zero output has no gradient path. n
// units; the four gates' gradients at dg + q * stride (stride = H for a whole row)
template <typename scalar_t>
static inline void pass_row(const scalar_t* __restrict dh, const scalar_t* __restrict dc, scalar_t* __restrict dg,
                            int64_t stride, scalar_t* __restrict dhp, scalar_t* __restrict dcp, int64_t n) {
  for (int64_t q = 0; q < 4; ++q) zero_row(dg + q * stride, n);
  for (int64_t j = 0; j < n; ++j) {
    dhp[j] = dh[j];
    dcp[j] = dc[j];
  }
}

// The matrix products of one backward step on this thread's rows, given the gradients of the
// input term (d_in, wrt x_t W_ih^T) and of the recurrent term (d_rec, wrt h_{t-1} W_hh^T):
//   dh_{t-1} += d_rec W_hh,  dx_t = d_in W_ih,  dW_hh^T += h_{t-1}^T d_rec,  dW_ih^T += x_t^T d_in
// (for the LSTM both are the gate gradients dG).
template <typename scalar_t>
struct StepGrads {
  const Recurrent &rec, &rin;
  const scalar_t *HS, *X;
  int64_t B, H, I, b0, Bt;
  Tensor h_t, x_t;  // scratch: h_{t-1}^T and x_t^T of the rows
  StepGrads(const Recurrent& rec_, const Recurrent& rin_, const scalar_t* HS_, const scalar_t* X_, int64_t B_,
            int64_t H_, int64_t I_, int64_t b0_, int64_t Bt_, const at::TensorOptions& opts)
      : rec(rec_), rin(rin_), HS(HS_), X(X_), B(B_), H(H_), I(I_), b0(b0_), Bt(Bt_),
        h_t(at::empty({H_, Bt_}, opts)), x_t(at::empty({I_, Bt_}, opts)) {}

  void operator()(int64_t t, const Tensor& d_in, const Tensor& d_rec, Tensor dh_prev_rows, Tensor dx_rows,
                  Tensor& dwhh, Tensor& dwih) {
    rec.acc<scalar_t>(dh_prev_rows, d_rec);
    dx_rows.zero_();
    rin.acc<scalar_t>(dx_rows, d_in);
    transpose_into(HS + t * B * H + b0 * H, Bt, H, H, h_t.data_ptr<scalar_t>());
    acc_ab<scalar_t>(dwhh, h_t, d_rec);
    transpose_into(X + (t * B + b0) * I, Bt, I, I, x_t.data_ptr<scalar_t>());
    acc_ab<scalar_t>(dwih, x_t, d_in);
  }

  // The same for the LSTM's gate gradients dg (rows of this thread, 4H each) on the running rows
  // only (global indices; an ended row's dG is zero, so it adds nothing to any product, and its
  // dx_t is zero).
  // dg and dx_rows: this thread's rows; dh_prev: the whole batch's.
  void running(int64_t t, const std::vector<int64_t>& rows, const scalar_t* dg, scalar_t* dh_prev, Tensor dx_rows,
               Tensor& dwhh, Tensor& dwih) {
    const int64_t m = int64_t(rows.size());
    dx_rows.zero_();
    if (m == 0) return;
    if (!dgc.defined()) {
      dgc = at::empty({Bt, 4 * H}, h_t.options());
      dhc = at::empty({Bt, H}, h_t.options());
      dxc = at::empty({Bt, I}, h_t.options());
    }
    const Tensor g = dgc.narrow(0, 0, m);
    gather_rows(dg, 4 * H, rows, b0, 4 * H, dgc.data_ptr<scalar_t>());
    gather_rows(dh_prev, H, rows, 0, H, dhc.data_ptr<scalar_t>());  // (dh_prev: all rows of the batch)
    rec.acc<scalar_t>(dhc.narrow(0, 0, m), g);
    scatter_rows(dhc.data_ptr<scalar_t>(), rows, 0, H, dh_prev, H);
    Tensor dxm = dxc.narrow(0, 0, m);
    dxm.zero_();
    rin.acc<scalar_t>(dxm, g);
    scatter_rows(dxc.data_ptr<scalar_t>(), rows, b0, I, dx_rows.data_ptr<scalar_t>(), I);
    scalar_t* ht = h_t.data_ptr<scalar_t>();  // h_{t-1}^T of the running rows, (H, m)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < H; ++j) ht[j * m + i] = HS[t * B * H + rows[i] * H + j];
    acc_ab<scalar_t>(dwhh, h_t.view({-1}).narrow(0, 0, H * m).view({H, m}), g);
    scalar_t* xt = x_t.data_ptr<scalar_t>();
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < I; ++j) xt[j * m + i] = X[(t * B + rows[i]) * I + j];
    acc_ab<scalar_t>(dwih, x_t.view({-1}).narrow(0, 0, I * m).view({I, m}), g);
  }
  Tensor dgc, dhc, dxc;  // scratch of running(): the running rows' dG, dh_{t-1} and dx_t
};

// The backward of the unit split: per step, the element-wise pass over each thread's units
// (all sequences) gives the gate gradients dG_t, kept for every step; then dh_{t-1} += dG_t W_hh,
// each thread its block of dh's columns. The weight gradients, dx and db are each one GEMM over
// all steps at the end (into the first thread's partials).
template <typename scalar_t, bool PEEP, bool PHASED>
void units_backward(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh, const scalar_t* wci, const scalar_t* K,
                    int64_t kB, const scalar_t* GO, const int64_t* len, const Tensor& acts, const Tensor& hs,
                    const Tensor& cs, Tensor& dhb, Tensor& dcb, Tensor& dx, Tensor& dwhh_t, Tensor& dwih_t,
                    Tensor& dbias, Tensor& dpeep_parts, scalar_t* DK) {
  const int64_t T = acts.size(0), B = acts.size(1), I = x.size(2), H = w_hh.size(1), BH = B * H;
  scalar_t* DHB = dhb.data_ptr<scalar_t>();
  scalar_t* DCB = dcb.data_ptr<scalar_t>();
  Tensor dgall = at::empty({T, B, 4 * H}, acts.options());
  scalar_t* DGA = dgall.data_ptr<scalar_t>();
  const scalar_t* A = acts.data_ptr<scalar_t>();
  const scalar_t* HS = hs.data_ptr<scalar_t>();
  const scalar_t* CS = cs.data_ptr<scalar_t>();
  const int64_t blk = unit_block(H), nb = (H + blk - 1) / blk;
  const Tensor W = w_hh.detach();  // (as in forward_loop)
  const UnitPacks up(w_hh, T, /*backward=*/true);
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t cur = (t + 1) % 2, prv = t % 2;
    at::parallel_for(0, nb, 1, [&](int64_t q0, int64_t q1) {
      const int64_t tid = at::get_thread_num();
      scalar_t* acc = PEEP ? dpeep_parts[tid].data_ptr<scalar_t>() : nullptr;
      scalar_t* dk_base = PHASED ? (kB == 1 ? DK + tid * T * H : DK) : nullptr;
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t u0 = q * blk, hb = std::min(blk, H - u0);
        for (int64_t b = 0; b < B; ++b) {
          const int64_t r = b * H + u0, p = t * BH + r, n = (t + 1) * BH + r, g4 = t * 4 * BH + 4 * b * H + u0;
          const scalar_t *dhc = DHB + cur * BH + r, *dcc = DCB + cur * BH + r;
          scalar_t *dhp = DHB + prv * BH + r, *dcp = DCB + prv * BH + r;
          scalar_t* d = DGA + g4;
          if (len != nullptr && t >= len[b]) {
            pass_row(dhc, dcc, d, H, dhp, dcp, hb);
            continue;
          }
          const scalar_t* g = A + g4;
          backward_row<scalar_t, PEEP, PHASED>(
              g, g + H, g + 2 * H, g + 3 * H, dhc, dcc, GO + p, HS + p, CS + p, CS + n,
              PHASED ? K + t * kB * H + (kB == 1 ? u0 : r) : nullptr, PEEP ? wci + u0 : nullptr,
              PEEP ? wci + H + u0 : nullptr, PEEP ? wci + 2 * H + u0 : nullptr, d, d + H, d + 2 * H, d + 3 * H, dhp,
              dcp, PHASED ? dk_base + (kB == 1 ? t * H + u0 : p) : nullptr, PEEP ? acc + u0 : nullptr,
              PEEP ? acc + H + u0 : nullptr, PEEP ? acc + 2 * H + u0 : nullptr, hb);
        }
      }
    });
    const Tensor dgt = dgall[t];
    Tensor dhprev = dhb[prv];
    units_dh_product<scalar_t>(dhprev, dgt, W, up);  // dh_{t-1} += dG_t W_hh, by columns of dh
  }
  const Tensor dg2 = dgall.view({T * B, 4 * H});
  Tensor dx2 = dx.view({T * B, I});
  at::mm_out(dx2, dg2, w_ih);
  // dW_hh^T += h_{t-1}^T dG, dW_ih^T += x_t^T dG and db += the sum of dG's rows, one pass over dG
  acc_atb<scalar_t>(dg2, {{hs.narrow(0, 0, T).reshape({T * B, H}), dwhh_t[0]},
                          {x.reshape({T * B, I}), dwih_t[0]},
                          {Tensor(), dbias[0]}});
}

// The backward, all in one parallel region over the batch. Per step and thread: the
// element-wise pass gives the gate gradients dG of its rows (kept for this step only), then
//   dh_{t-1} += dG W_hh,  dx_t = dG W_ih,  and the weight-gradient sums
//   dW_hh^T += h_{t-1}^T dG,  dW_ih^T += x_t^T dG,  db += sum of dG rows
// accumulate in per-thread partials, added up at the end. (For few sequences and a large W_hh:
// units_backward.)
template <typename scalar_t, bool PEEP, bool PHASED>
void backward_loop(const Tensor& grad_out, const Tensor& x, const Tensor& w_ih, const Tensor& w_hh, const Tensor& peep,
                   const Tensor& k, const int64_t* len, const Tensor& acts, const Tensor& hs, const Tensor& cs,
                   Tensor& dh, Tensor& dc, Tensor& dx, Tensor& dwhh_t, Tensor& dwih_t, Tensor& dbias,
                   Tensor& dpeep_parts, Tensor& dk, bool units) {
  const int64_t T = acts.size(0), B = acts.size(1), I = x.size(2), H = w_hh.size(1), BH = B * H;
  const scalar_t* wci = PEEP ? peep.data_ptr<scalar_t>() : nullptr;
  const scalar_t* wcf = PEEP ? wci + H : nullptr;
  const scalar_t* wco = PEEP ? wci + 2 * H : nullptr;
  const Recurrent rec(w_hh, /*transpose=*/false, /*pack=*/!units), rin(w_ih, /*transpose=*/false, /*pack=*/!units);
  const int64_t* run_len = running_rows_enabled() ? len : nullptr;  // (products on the running rows)
  // dh and dc ping-pong: slot (t + 1) % 2 holds the gradient wrt the state after step t
  Tensor dhb = at::empty({2, B, H}, dh.options()), dcb = at::empty({2, B, H}, dc.options());
  dhb[T % 2].copy_(dh);
  dcb[T % 2].copy_(dc);
  scalar_t* DHB = dhb.data_ptr<scalar_t>();
  scalar_t* DCB = dcb.data_ptr<scalar_t>();
  const scalar_t* A = acts.data_ptr<scalar_t>();
  const scalar_t* HS = hs.data_ptr<scalar_t>();
  const scalar_t* CS = cs.data_ptr<scalar_t>();
  const scalar_t* X = x.data_ptr<scalar_t>();
  const scalar_t* K = PHASED ? k.data_ptr<scalar_t>() : nullptr;
  const int64_t kB = PHASED ? k.size(1) : 0;
  const scalar_t* GO = grad_out.data_ptr<scalar_t>();
  scalar_t* DK = PHASED ? dk.data_ptr<scalar_t>() : nullptr;
  if (units)
    units_backward<scalar_t, PEEP, PHASED>(x, w_ih, w_hh, wci, K, kB, GO, len, acts, hs, cs, dhb, dcb, dx, dwhh_t,
                                           dwih_t, dbias, dpeep_parts, DK);
  else at::parallel_for(0, B, batch_grain(B), [&](int64_t b0, int64_t b1) {
    const int64_t Bt = b1 - b0, tid = at::get_thread_num();
    scalar_t* acc = PEEP ? dpeep_parts[tid].data_ptr<scalar_t>() : nullptr;
    // dk: (T, B, H) per sequence, or with shared timestamps (kB == 1) this thread's sum (T, H)
    scalar_t* dk_base = PHASED ? (kB == 1 ? DK + tid * T * H : DK) : nullptr;
    Tensor dg = at::empty({Bt, 4 * H}, acts.options());  // this step's gate gradients, this thread's rows
    StepGrads<scalar_t> products(rec, rin, HS, X, B, H, I, b0, Bt, acts.options());
    Tensor dwhh = dwhh_t[tid], dwih = dwih_t[tid], db = dbias[tid];
    scalar_t* DG = dg.data_ptr<scalar_t>();
    scalar_t* DB = db.data_ptr<scalar_t>();
    std::vector<int64_t> rows;  // the rows still running at step t (with lengths)
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t cur = (t + 1) % 2, prv = t % 2;
      const bool compact = running_rows(run_len, t, b0, b1, rows);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r = b * H, p = t * BH + r, n = (t + 1) * BH + r, g4 = t * 4 * BH + 4 * r;
        const scalar_t *dh = DHB + cur * BH + r, *dc = DCB + cur * BH + r;
        scalar_t *dhp = DHB + prv * BH + r, *dcp = DCB + prv * BH + r;
        scalar_t* d = DG + (b - b0) * 4 * H;
        if (len != nullptr && t >= len[b]) {
          pass_row(dh, dc, d, H, dhp, dcp, H);
          continue;
        }
        const scalar_t* g = A + g4;
        backward_row<scalar_t, PEEP, PHASED>(g, g + H, g + 2 * H, g + 3 * H, dh, dc, GO + p, HS + p, CS + p, CS + n,
                                             PHASED ? K + t * kB * H + (kB == 1 ? 0 : r) : nullptr, wci, wcf, wco, d,
                                             d + H, d + 2 * H, d + 3 * H, dhp, dcp,
                                             PHASED ? dk_base + (kB == 1 ? t * H : p) : nullptr,
                                             PEEP ? acc : nullptr, PEEP ? acc + H : nullptr,
                                             PEEP ? acc + 2 * H : nullptr, H);
        add_row(d, DB, 4 * H);
      }
      if (compact) products.running(t, rows, DG, DHB + prv * BH, dx[t].narrow(0, b0, Bt), dwhh, dwih);
      else products(t, dg, dg, dhb[prv].narrow(0, b0, Bt), dx[t].narrow(0, b0, Bt), dwhh, dwih);
    }
  });
  dh.copy_(dhb[0]);
  dc.copy_(dcb[0]);
}

std::vector<Tensor> lstm_backward(const Tensor& grad_out, const Tensor& grad_hn, const Tensor& grad_cn,
                                  const Tensor& x, const Tensor& w_ih, const Tensor& w_hh, const Tensor& peep,
                                  const Tensor& k, const Tensor& lengths, const Tensor& acts, const Tensor& hs,
                                  const Tensor& cs) {
  const int64_t T = acts.size(0), B = acts.size(1), I = x.size(2), H = w_hh.size(1);
  const int64_t nt = at::get_num_threads();
  auto opts = acts.options();
  const bool peephole = present(peep), phased = present(k);
  Tensor dh = present(grad_hn) ? grad_hn.contiguous().clone() : at::zeros({B, H}, opts);
  Tensor dc = present(grad_cn) ? grad_cn.contiguous().clone() : at::zeros({B, H}, opts);
  Tensor dx = at::empty({T, B, I}, opts);
  Tensor dwhh_t = at::zeros({nt, H, 4 * H}, opts), dwih_t = at::zeros({nt, I, 4 * H}, opts);
  Tensor dbias = at::zeros({nt, 4 * H}, opts);
  const bool shared_k = phased && k.size(1) == 1;
  // dk accumulates: zeros, per sequence (T, B, H), or per thread (threads, T, H) when shared
  Tensor dk = !phased ? at::empty({0}, opts) : (shared_k ? at::zeros({nt, T, H}, opts) : at::zeros({T, B, H}, opts));
  Tensor dpeep_parts = peephole ? at::zeros({nt, 3, H}, opts) : at::empty({0}, opts);
  const Tensor go = present(grad_out) ? grad_out.contiguous() : at::zeros({T, B, H}, opts);
  const Tensor xc = x.contiguous(), wi = w_ih.contiguous(), w = w_hh.contiguous();
  const Tensor kc = phased ? k.contiguous() : k;
  const int64_t* len = present(lengths) ? lengths.data_ptr<int64_t>() : nullptr;
  const bool units = split_units(B, H);
  AT_DISPATCH_FLOATING_TYPES(acts.scalar_type(), "lstm_backward", [&] {
    auto run = [&](auto peep_flag, auto phased_flag) {
      backward_loop<scalar_t, decltype(peep_flag)::value, decltype(phased_flag)::value>(
          go, xc, wi, w, peep, kc, len, acts, hs, cs, dh, dc, dx, dwhh_t, dwih_t, dbias, dpeep_parts, dk, units);
    };
    using Y = std::true_type;
    using N = std::false_type;
    if (phased && peephole) run(Y{}, Y{});
    else if (phased) run(N{}, Y{});
    else if (peephole) run(Y{}, N{});
    else run(N{}, N{});
  });
  Tensor dw_hh = dwhh_t.sum(0).t().contiguous(), dw_ih = dwih_t.sum(0).t().contiguous(), db = dbias.sum(0);
  Tensor dpeep = peephole ? dpeep_parts.sum(0) : at::empty({0}, opts);
  if (shared_k) dk = dk.sum(0).unsqueeze(1);  // (T, 1, H)
  return {dx, dw_ih, db, dw_hh, dh, dc, dpeep, dk};
}

// ---------------------------------------------------------------------------------------------
// Layer-normalised LSTM
// ---------------------------------------------------------------------------------------------

// The reductions of the layer norms. A loop `s += x[j]` is one chain of dependent additions (GCC
// vectorises it into one register of partial sums, 3-4 cycles per 8 values); with float32 on
// AVX2 these keep four independent registers of partial sums (two per sum in sum2) so that the
// row is read at the rate of the loads; float64 and other CPUs keep the plain loops. A fixed
// order: each result is deterministic, only differently rounded than the plain loop.
template <typename scalar_t>
struct RowSums {
  // sum of x and max |x| (as bits for float: NaN above inf above every finite value, so the
  // maximum says whether the row is finite without relying on how max treats NaN)
  static void sum_absmax(const scalar_t* __restrict x, int64_t n, scalar_t& sum, scalar_t& big) {
    scalar_t b = 0, m = 0;
    bool finite = true;
    for (int64_t j = 0; j < n; ++j) {
      finite &= is_finite_bits(x[j]);
      b = std::max(b, std::fabs(x[j]));
      m += x[j];
    }
    sum = m;
    big = finite ? b : std::numeric_limits<scalar_t>::infinity();
  }
  static scalar_t sum_sq_dev(const scalar_t* __restrict x, int64_t n, scalar_t mean) {
    scalar_t v = 0;
    for (int64_t j = 0; j < n; ++j) {
      const scalar_t d = x[j] - mean;
      v += d * d;
    }
    return v;
  }
  static void sum2(const scalar_t* __restrict a, const scalar_t* __restrict z, int64_t n, scalar_t& sa,
                   scalar_t& saz) {
    scalar_t p = 0, q = 0;
    for (int64_t j = 0; j < n; ++j) {
      p += a[j];
      q += a[j] * z[j];
    }
    sa = p;
    saz = q;
  }
};

#if defined(__AVX2__) && defined(__FMA__)
inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

template <>
struct RowSums<float> {
  static void sum_absmax(const float* __restrict x, int64_t n, float& sum, float& big) {
    const __m256i abs = _mm256_set1_epi32(0x7fffffff);
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    __m256i m0 = _mm256_setzero_si256(), m1 = m0;
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
      const __m256 a = _mm256_loadu_ps(x + j), b = _mm256_loadu_ps(x + j + 8), c = _mm256_loadu_ps(x + j + 16),
                   d = _mm256_loadu_ps(x + j + 24);
      s0 = _mm256_add_ps(s0, a);
      s1 = _mm256_add_ps(s1, b);
      s2 = _mm256_add_ps(s2, c);
      s3 = _mm256_add_ps(s3, d);
      m0 = _mm256_max_epu32(m0, _mm256_max_epu32(_mm256_and_si256(_mm256_castps_si256(a), abs),
                                                 _mm256_and_si256(_mm256_castps_si256(b), abs)));
      m1 = _mm256_max_epu32(m1, _mm256_max_epu32(_mm256_and_si256(_mm256_castps_si256(c), abs),
                                                 _mm256_and_si256(_mm256_castps_si256(d), abs)));
    }
    for (; j + 8 <= n; j += 8) {
      const __m256 a = _mm256_loadu_ps(x + j);
      s0 = _mm256_add_ps(s0, a);
      m0 = _mm256_max_epu32(m0, _mm256_and_si256(_mm256_castps_si256(a), abs));
    }
    alignas(32) uint32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), _mm256_max_epu32(m0, m1));
    float s = hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    uint32_t mb = 0;
    for (int i = 0; i < 8; ++i) mb = std::max(mb, lanes[i]);
    for (; j < n; ++j) {
      uint32_t bits;
      std::memcpy(&bits, x + j, sizeof bits);
      mb = std::max(mb, bits & 0x7fffffffu);
      s += x[j];
    }
    sum = s;
    if (mb >= 0x7f800000u) mb = 0x7f800000u;  // a NaN or an inf: +inf (not finite) either way
    std::memcpy(&big, &mb, sizeof big);
  }
  static float sum_sq_dev(const float* __restrict x, int64_t n, float mean) {
    const __m256 mu = _mm256_set1_ps(mean);
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
      const __m256 a = _mm256_sub_ps(_mm256_loadu_ps(x + j), mu), b = _mm256_sub_ps(_mm256_loadu_ps(x + j + 8), mu),
                   c = _mm256_sub_ps(_mm256_loadu_ps(x + j + 16), mu),
                   d = _mm256_sub_ps(_mm256_loadu_ps(x + j + 24), mu);
      s0 = _mm256_fmadd_ps(a, a, s0);
      s1 = _mm256_fmadd_ps(b, b, s1);
      s2 = _mm256_fmadd_ps(c, c, s2);
      s3 = _mm256_fmadd_ps(d, d, s3);
    }
    for (; j + 8 <= n; j += 8) {
      const __m256 a = _mm256_sub_ps(_mm256_loadu_ps(x + j), mu);
      s0 = _mm256_fmadd_ps(a, a, s0);
    }
    float v = hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; j < n; ++j) v += (x[j] - mean) * (x[j] - mean);
    return v;
  }
  static void sum2(const float* __restrict a, const float* __restrict z, int64_t n, float& sa, float& saz) {
    __m256 p0 = _mm256_setzero_ps(), p1 = p0, q0 = p0, q1 = p0;
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
      const __m256 a0 = _mm256_loadu_ps(a + j), a1 = _mm256_loadu_ps(a + j + 8);
      p0 = _mm256_add_ps(p0, a0);
      p1 = _mm256_add_ps(p1, a1);
      q0 = _mm256_fmadd_ps(a0, _mm256_loadu_ps(z + j), q0);
      q1 = _mm256_fmadd_ps(a1, _mm256_loadu_ps(z + j + 8), q1);
    }
    float p = hsum8(_mm256_add_ps(p0, p1)), q = hsum8(_mm256_add_ps(q0, q1));
    for (; j < n; ++j) {
      p += a[j];
      q += a[j] * z[j];
    }
    sa = p;
    saz = q;
  }
};
#endif

// The LN-LSTM's row functions below (normalise, ln_gates_row, ln_out_row) are compiled once, not
// inlined: with -ffast-math GCC rounds the same function differently where it is inlined into the
// training forward and into the inference loop (fused multiply-adds and vector code chosen per
// context), and a model scored without gradients must give the training forward's numbers bit for
// bit (tests/test_fast.py::test_inference_gives_the_training_forwards_numbers_bit_for_bit). One call
// per row of 4H values: no measurable cost.
//
// Normalise x[0:n] in place to z = (x - mean) / sqrt(var + eps); returns 1 / sqrt(var + eps).
// Rows with values beyond 2^40 are first scaled by a power of two (exact) and normalised as the
// scaled row is, so that the squares never overflow (as phasedlstm.cells.layer_norm does).
template <typename scalar_t>
[[gnu::noinline]] static scalar_t normalise(scalar_t* __restrict x, int64_t n) {
  scalar_t big, mean;  // (one pass: the largest magnitude and the sum)
  RowSums<scalar_t>::sum_absmax(x, n, mean, big);
  if (!is_finite_bits(big)) {  // an inf or NaN in the row: its normalisation is undefined, as in the reference
    for (int64_t j = 0; j < n; ++j) x[j] = std::numeric_limits<scalar_t>::quiet_NaN();
    return std::numeric_limits<scalar_t>::quiet_NaN();
  }
  scalar_t scale = 1;
  if (big > kLnBig) {
    scale = std::exp2(std::floor(std::log2(big)));  // as the reference: 2^floor(log2(big))
    const scalar_t inv = scalar_t(1) / scale;  // a power of two: exact
    mean = 0;  // (the sum of the unscaled row may have overflowed)
    for (int64_t j = 0; j < n; ++j) {
      x[j] *= inv;
      mean += x[j];
    }
  }
  mean /= n;
  const scalar_t var = RowSums<scalar_t>::sum_sq_dev(x, n, mean) / n;
  const scalar_t rstd = scalar_t(1) / std::sqrt(var + scalar_t(kLnEps));  // (eps acts on the scaled row)
  for (int64_t j = 0; j < n; ++j) x[j] = (x[j] - mean) * rstd;
  return rstd / scale;
}

// Backward of z = normalise(x): dx from dz (the gradient wrt z).
template <typename scalar_t>
static inline void normalise_backward(const scalar_t* __restrict z, const scalar_t* __restrict dz, scalar_t rstd,
                                      int64_t n, scalar_t* __restrict dx) {
  scalar_t mean_dz, mean_dzz;
  RowSums<scalar_t>::sum2(dz, z, n, mean_dz, mean_dzz);
  mean_dz /= n;
  mean_dzz /= n;
  for (int64_t j = 0; j < n; ++j) dx[j] = rstd * (dz[j] - mean_dz - z[j] * mean_dzz);
}

// a = g_ih * zi + b_ih + g_hh * z + b_hh (4H), then the gate activations in place and the
// new cell state.
template <typename scalar_t>
[[gnu::noinline]] static void ln_gates_row(scalar_t* __restrict a, const scalar_t* __restrict zi,
                                           const scalar_t* __restrict z, const scalar_t* __restrict g_ih,
                                           const scalar_t* __restrict b_ih, const scalar_t* __restrict g_hh,
                                           const scalar_t* __restrict b_hh, const scalar_t* __restrict cp,
                                           scalar_t* __restrict c, int64_t H) {
  for (int64_t j = 0; j < 4 * H; ++j) a[j] = g_ih[j] * zi[j] + b_ih[j] + g_hh[j] * z[j] + b_hh[j];
  scalar_t *ai = a, *af = a + H, *ag = a + 2 * H, *ao = a + 3 * H;
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t i = sigm(ai[j]), f = sigm(af[j]), g = tanh_(ag[j]), o = sigm(ao[j]);
    ai[j] = i;
    af[j] = f;
    ag[j] = g;
    ao[j] = o;
    c[j] = f * cp[j] + i * g;
  }
}

// h = o * tanh(g_c * zc + b_c)
template <typename scalar_t>
[[gnu::noinline]] static void ln_out_row(const scalar_t* __restrict o, const scalar_t* __restrict zc,
                                         const scalar_t* __restrict g_c, const scalar_t* __restrict b_c,
                                         scalar_t* __restrict h, int64_t H) {
  for (int64_t j = 0; j < H; ++j) h[j] = o[j] * tanh_(g_c[j] * zc[j] + b_c[j]);
}

// The LN parameters of one layer, as raw pointers (absent shifts are zeros).
template <typename scalar_t>
struct LnParams {
  const scalar_t *g_ih, *b_ih, *g_hh, *b_hh, *g_c, *b_c;
};

// The LN parameters as contiguous tensors (absent shifts as zeros, so the rows need no branch).
struct LnTensors {
  Tensor g_ih, b_ih, g_hh, b_hh, g_c, b_c;
  LnTensors(const Tensor& g_ih_, const Tensor& b_ih_, const Tensor& g_hh_, const Tensor& b_hh_, const Tensor& g_c_,
            const Tensor& b_c_, int64_t H) {
    auto z = [&](const Tensor& t, int64_t n) { return present(t) ? t.contiguous() : at::zeros({n}, g_ih_.options()); };
    g_ih = g_ih_.contiguous();
    g_hh = g_hh_.contiguous();
    g_c = g_c_.contiguous();
    b_ih = z(b_ih_, 4 * H);
    b_hh = z(b_hh_, 4 * H);
    b_c = z(b_c_, H);
  }
  template <typename scalar_t>
  LnParams<scalar_t> params() const {
    return {g_ih.data_ptr<scalar_t>(), b_ih.data_ptr<scalar_t>(), g_hh.data_ptr<scalar_t>(),
            b_hh.data_ptr<scalar_t>(), g_c.data_ptr<scalar_t>(), b_c.data_ptr<scalar_t>()};
  }
};

// The LN-LSTM's recurrent term z = h_{t-1} W_hh^T of all rows, shared among threads by units (few
// sequences and a large W_hh, as split_units says): each thread multiplies by its block of units'
// rows of W_hh in each gate, so no thread streams all of W_hh. Its layer norms couple all units of
// a row, so the element-wise pass after it is shared by rows (a second parallel region per step).
// z: (B, 4H) rows, any row stride; hprev contiguous
inline void ln_units_product(Tensor z, const Tensor& hprev, const Tensor& W, const UnitPacks& up) {
  const int64_t H = W.size(1), blk = unit_block(H), nb = (H + blk - 1) / blk;
  at::parallel_for(0, nb, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t u0 = q * blk, hb = std::min(blk, H - u0);
      for (int64_t gate = 0; gate < 4; ++gate) {
        if (up.on() && z.scalar_type() == at::kFloat) {
          up.acc(4 * q + gate, z.size(0), hprev.data_ptr<float>(), H, z.data_ptr<float>() + gate * H + u0,
                 z.stride(0), /*set=*/true);
          continue;
        }
        Tensor out = z.narrow(1, gate * H + u0, hb);
        at::mm_out(out, hprev, W.narrow(0, gate * H + u0, hb).t());
      }
    }
  });
}

template <typename scalar_t>
void ln_forward_loop(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh, const LnParams<scalar_t>& P,
                     const int64_t* len, Tensor& rih, Tensor& zhh, Tensor& rhh, Tensor& zc, Tensor& rc,
                     Tensor& hs, Tensor& cs, Tensor& out, bool own_out) {
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(1), BH = B * H;
  const bool units = split_units(B, H);
  const Recurrent rec(w_hh, /*transpose=*/true, /*pack=*/!units);
  // zhh (T, B, 8H): per row the recurrent term h_{t-1} W_hh^T, then the input term x_t W_ih^T, both
  // normalised in place below and kept for the backward. The input terms: with the batch split and
  // the micro-kernel each thread's per step (still in cache when normalised); otherwise those of all
  // steps in one (multi-threaded) GEMM here.
  const Recurrent rin(w_ih, /*transpose=*/true, /*pack=*/!units);
  const bool per_step_in = !units && rin.use_packed;
  if (!per_step_in) {
    Tensor zi_all = zhh.view({T * B, 8 * H}).narrow(1, 4 * H, 4 * H);
    at::mm_out(zi_all, x.reshape({T * B, I}).detach(), w_ih.t().detach());
  }
  scalar_t* RI = rih.data_ptr<scalar_t>();
  scalar_t* Z = zhh.data_ptr<scalar_t>();
  scalar_t* R = rhh.data_ptr<scalar_t>();
  scalar_t* ZC = zc.data_ptr<scalar_t>();
  scalar_t* RC = rc.data_ptr<scalar_t>();
  scalar_t* HS = hs.data_ptr<scalar_t>();
  scalar_t* CS = cs.data_ptr<scalar_t>();
  scalar_t* O = out.data_ptr<scalar_t>();
  const Tensor W = units ? w_hh.detach() : Tensor();
  const UnitPacks up(units ? w_hh : Tensor(), units ? T : 0);
  // rows b0..b1 of step t (their z already computed); with the batch split one region runs all steps
  auto rows = [&](int64_t t, int64_t b0, int64_t b1, std::vector<scalar_t>& act) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r = b * H, p = t * BH + r, n = (t + 1) * BH + r, g8 = 8 * p;
      if (len != nullptr && t >= len[b]) {  // past the end: state unchanged, output zero
        hold_row(HS + p, CS + p, HS + n, CS + n, O + p, H);
        continue;
      }
      RI[t * B + b] = normalise(Z + g8 + 4 * H, 4 * H);
      R[t * B + b] = normalise(Z + g8, 4 * H);
      ln_gates_row(act.data(), Z + g8 + 4 * H, Z + g8, P.g_ih, P.b_ih, P.g_hh, P.b_hh, CS + p, ZC + p, H);
      copy_row(ZC + p, CS + n, H);  // c_t, before its normalisation
      RC[t * B + b] = normalise(ZC + p, H);
      ln_out_row(act.data() + 3 * H, ZC + p, P.g_c, P.b_c, HS + n, H);
      if (own_out) copy_row(HS + n, O + p, H);
    }
  };
  if (units) {
    for (int64_t t = 0; t < T; ++t) {
      ln_units_product(zhh[t].narrow(1, 0, 4 * H), hs[t], W, up);
      at::parallel_for(0, B, batch_grain(B), [&](int64_t b0, int64_t b1) {
        std::vector<scalar_t> act(4 * H);
        rows(t, b0, b1, act);
      });
    }
    return;
  }
  at::parallel_for(0, B, batch_grain(B), [&](int64_t b0, int64_t b1) {
    const int64_t Bt = b1 - b0;
    std::vector<scalar_t> act(4 * H);  // the gate activations of one row (the backward recomputes them)
    for (int64_t t = 0; t < T; ++t) {
      // z = h_{t-1} W_hh^T for this thread's rows (the first 4H of their zhh rows)
      if (per_step_in) rin.set<scalar_t>(zhh[t].narrow(0, b0, Bt).narrow(1, 4 * H, 4 * H), x[t].narrow(0, b0, Bt));
      rec.set<scalar_t>(zhh[t].narrow(0, b0, Bt).narrow(1, 0, 4 * H), hs[t].narrow(0, b0, Bt));
      rows(t, b0, b1, act);
    }
  });
}

// Inference: nothing kept for backward; the input terms of a chunk of steps (one GEMM each
// chunk: bounded memory for long sequences), the recurrent terms of one step's rows (per thread,
// or shared among threads by units: ln_units_product), and the states in two rows (ping-pong).
template <typename scalar_t>
void ln_infer_loop(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh, const LnParams<scalar_t>& P,
                   const int64_t* len, Tensor& hbuf, Tensor& cbuf, Tensor& out) {
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(1), BH = B * H;
  // (with the micro-kernel, the packed inference forward's rule, as for the other layers: at (B, H) =
  // (32, 512) on 2 threads the batch split ran 0.91x torch.nn.LSTM's time, the unit split 1.10x)
  const bool units = split_units(B, H, /*packed_infer=*/Recurrent::packable(w_hh, /*transpose=*/true));
  const Recurrent rec(w_hh, /*transpose=*/true, /*pack=*/!units);
  // With the batch split and the micro-kernel, each thread also multiplies its rows' inputs per
  // step (x_t W_ih^T, K = I), into a buffer still in cache when the row is normalised, instead of
  // one GEMM per chunk of steps whose result is read back from memory.
  const Recurrent rin(w_ih, /*transpose=*/true, /*pack=*/!units);
  const bool per_step_in = !units && rin.use_packed;
  const Tensor W = units ? w_hh.detach() : Tensor();
  const UnitPacks up(units ? w_hh : Tensor(), units ? T : 0);
  scalar_t* HS = hbuf.data_ptr<scalar_t>();
  scalar_t* CS = cbuf.data_ptr<scalar_t>();
  scalar_t* O = out.data_ptr<scalar_t>();
  const int64_t chunk = per_step_in ? T : infer_chunk(T, BH);
  Tensor zi_all = per_step_in ? Tensor() : at::empty({chunk, B, 4 * H}, x.options());
  Tensor z_all = units ? at::empty({B, 4 * H}, x.options()) : Tensor();  // (the unit split's recurrent terms)
  // rows b0..b1 of step t; Z: their recurrent terms, ZI their input terms, row b at 4 (b - zb) H of each
  auto rows = [&](int64_t t, int64_t b0, int64_t b1, scalar_t* Z, scalar_t* ZI, int64_t zb, std::vector<scalar_t>& act,
                  std::vector<scalar_t>& zc) {
    const int64_t sp = t % 2, sn = (t + 1) % 2;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r = b * H, o4 = 4 * (b - zb) * H;
      scalar_t *hp = HS + sp * BH + r, *cp = CS + sp * BH + r, *hn = HS + sn * BH + r, *cn = CS + sn * BH + r;
      if (len != nullptr && t >= len[b]) {
        hold_row(hp, cp, hn, cn, O + t * BH + r, H);
        continue;
      }
      normalise(ZI + o4, 4 * H);
      normalise(Z + o4, 4 * H);
      ln_gates_row(act.data(), ZI + o4, Z + o4, P.g_ih, P.b_ih, P.g_hh, P.b_hh, cp, zc.data(), H);
      copy_row(zc.data(), cn, H);
      normalise(zc.data(), H);
      ln_out_row(act.data() + 3 * H, zc.data(), P.g_c, P.b_c, hn, H);
      copy_row(hn, O + t * BH + r, H);
    }
  };
  for (int64_t t0 = 0; t0 < T; t0 += chunk) {
    const int64_t n = std::min(chunk, T - t0);  // (one chunk of all steps with per_step_in)
    if (!per_step_in) {
      Tensor zi_n = zi_all.narrow(0, 0, n).view({n * B, 4 * H});
      at::mm_out(zi_n, x.narrow(0, t0, n).reshape({n * B, I}).detach(), w_ih.t().detach());
    }
    auto zi_of = [&](int64_t t) { return zi_all.data_ptr<scalar_t>() + (t - t0) * B * 4 * H; };
    if (units) {  // per step: the recurrent terms by units, then the rows
      for (int64_t t = t0; t < t0 + n; ++t) {
        ln_units_product(z_all, hbuf[t % 2], W, up);
        at::parallel_for(0, B, batch_grain(B), [&](int64_t b0, int64_t b1) {
          std::vector<scalar_t> act(4 * H), zc(H);
          rows(t, b0, b1, z_all.data_ptr<scalar_t>(), zi_of(t), 0, act, zc);
        });
      }
      continue;
    }
    at::parallel_for(0, B, batch_grain(B), [&](int64_t b0, int64_t b1) {
      const int64_t Bt = b1 - b0;
      std::vector<scalar_t> act(4 * H), zc(H);
      Tensor z_rows = at::empty({Bt, 4 * H}, x.options());
      Tensor zi_rows = per_step_in ? at::empty({Bt, 4 * H}, x.options()) : Tensor();
      for (int64_t t = t0; t < t0 + n; ++t) {
        if (per_step_in) rin.set<scalar_t>(zi_rows, x[t].narrow(0, b0, Bt));
        rec.set<scalar_t>(z_rows, hbuf[t % 2].narrow(0, b0, Bt));
        rows(t, b0, b1, z_rows.data_ptr<scalar_t>(),
             per_step_in ? zi_rows.data_ptr<scalar_t>() : zi_of(t) + b0 * 4 * H, b0, act, zc);
      }
    });
  }
}

std::vector<Tensor> ln_forward(const Tensor& x, const Tensor& w_ih, const Tensor& g_ih, const Tensor& b_ih,
                               const Tensor& w_hh, const Tensor& h0, const Tensor& c0, const Tensor& g_hh,
                               const Tensor& b_hh, const Tensor& g_c, const Tensor& b_c, const Tensor& lengths,
                               bool save) {
  TORCH_CHECK(x.dim() == 3, "x must be (T, B, I)");
  const int64_t T = x.size(0), B = x.size(1), H = w_hh.size(1);
  auto opts = x.options();
  if (!save) {
    const Tensor xc = x.contiguous(), wi = w_ih.contiguous(), w = w_hh.contiguous();
    const LnTensors ln(g_ih, b_ih, g_hh, b_hh, g_c, b_c, H);
    const int64_t* len = present(lengths) ? lengths.data_ptr<int64_t>() : nullptr;
    Tensor hbuf = at::empty({2, B, H}, opts), cbuf = at::empty({2, B, H}, opts), out = at::empty({T, B, H}, opts);
    hbuf[0].copy_(h0);
    cbuf[0].copy_(c0);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ln_infer", [&] {
      ln_infer_loop<scalar_t>(xc, wi, w, ln.params<scalar_t>(), len, hbuf, cbuf, out);
    });
    return {out, hbuf[T % 2].clone(), cbuf[T % 2].clone()};
  }
  Tensor zhh = at::empty({T, B, 8 * H}, opts);  // the recurrent and the input term of every row
  Tensor rih = at::empty({T, B}, opts), rhh = at::empty({T, B}, opts), zc = at::empty({T, B, H}, opts),
         rc = at::empty({T, B}, opts);
  Tensor hs = at::empty({T + 1, B, H}, opts), cs = at::empty({T + 1, B, H}, opts);
  // without lengths the output is the saved states h_1..h_T themselves
  const bool own_out = present(lengths);
  Tensor out = own_out ? at::empty({T, B, H}, opts) : hs.narrow(0, 1, T);
  hs[0].copy_(h0);
  cs[0].copy_(c0);
  const Tensor xc = x.contiguous(), wi = w_ih.contiguous(), w = w_hh.contiguous();
  const LnTensors ln(g_ih, b_ih, g_hh, b_hh, g_c, b_c, H);
  const int64_t* len = present(lengths) ? lengths.data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ln_forward", [&] {
    ln_forward_loop<scalar_t>(xc, wi, w, ln.params<scalar_t>(), len, rih, zhh, rhh, zc, rc, hs, cs, out, own_out);
  });
  return {out, hs[T].clone(), cs[T].clone(), rih, zhh, rhh, zc, rc, hs, cs};
}

// From dh_t (incl. the output's gradient) back to the gradient of the gate pre-activations dA
// (4H, = d xw) and of z (the normalised recurrent term), with the LN parameter sums.
template <typename scalar_t>
static inline void ln_backward_out_row(const scalar_t* __restrict dh, const scalar_t* __restrict gout,
                                       const scalar_t* __restrict o, const scalar_t* __restrict zc,
                                       const scalar_t* __restrict g_c, const scalar_t* __restrict b_c,
                                       scalar_t* __restrict dao, scalar_t* __restrict dzc,
                                       scalar_t* __restrict acc_gc, scalar_t* __restrict acc_bc, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t dht = dh[j] + gout[j];
    const scalar_t ty = tanh_(g_c[j] * zc[j] + b_c[j]);
    dao[j] = dht * ty * o[j] * (1 - o[j]);
    const scalar_t dy = dht * o[j] * (1 - ty * ty);
    acc_gc[j] += dy * zc[j];
    acc_bc[j] += dy;
    dzc[j] = dy * g_c[j];
  }
}

template <typename scalar_t>
static inline void ln_backward_cell_row(const scalar_t* __restrict a, const scalar_t* __restrict dc,
                                        const scalar_t* __restrict dx, const scalar_t* __restrict cp,
                                        scalar_t* __restrict dai, scalar_t* __restrict daf, scalar_t* __restrict dag,
                                        scalar_t* __restrict dcp, int64_t H) {
  const scalar_t *ai = a, *af = a + H, *ag = a + 2 * H;
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t i = ai[j], f = af[j], g = ag[j];
    const scalar_t dct = dc[j] + dx[j];
    dai[j] = dct * g * i * (1 - i);
    daf[j] = dct * cp[j] * f * (1 - f);
    dag[j] = dct * i * (1 - g * g);
    dcp[j] = dct * f;
  }
}

template <typename scalar_t>
static inline void ln_backward_z_row(const scalar_t* __restrict da, const scalar_t* __restrict z,
                                     const scalar_t* __restrict g_hh, scalar_t* __restrict acc_g,
                                     scalar_t* __restrict acc_b, scalar_t* __restrict dzn, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    acc_g[j] += da[j] * z[j];
    acc_b[j] += da[j];
    dzn[j] = da[j] * g_hh[j];
  }
}

// As the LSTM's backward: one parallel region over the batch; per step and thread the gradients
// wrt x_t W_ih^T (dXW) and h_{t-1} W_hh^T (dZ) of its rows, then dh_{t-1} += dZ W_hh,
// dx_t = dXW W_ih, and per-thread sums dW_hh^T += h_{t-1}^T dZ, dW_ih^T += x_t^T dXW.
template <typename scalar_t>
void ln_backward_loop(const Tensor& grad_out, const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                      const LnParams<scalar_t>& P, const int64_t* len, const Tensor& rih,
                      const Tensor& zhh, const Tensor& rhh, const Tensor& zc, const Tensor& rc, const Tensor& hs,
                      const Tensor& cs, Tensor& dh, Tensor& dc, Tensor& dx, Tensor& dwhh_t, Tensor& dwih_t,
                      Tensor& parts) {
  const int64_t T = zhh.size(0), B = zhh.size(1), I = x.size(2), H = w_hh.size(1), BH = B * H;
  const bool units = split_units(B, H);
  const Recurrent rec(w_hh, /*transpose=*/false, /*pack=*/!units), rin(w_ih, /*transpose=*/false, /*pack=*/!units);
  Tensor dhb = at::empty({2, B, H}, dh.options()), dcb = at::empty({2, B, H}, dc.options());
  dhb[T % 2].copy_(dh);
  dcb[T % 2].copy_(dc);
  scalar_t* DHB = dhb.data_ptr<scalar_t>();
  scalar_t* DCB = dcb.data_ptr<scalar_t>();
  const scalar_t* RI = rih.data_ptr<scalar_t>();
  const scalar_t* Z = zhh.data_ptr<scalar_t>();
  const scalar_t* R = rhh.data_ptr<scalar_t>();
  const scalar_t* ZC = zc.data_ptr<scalar_t>();
  const scalar_t* RC = rc.data_ptr<scalar_t>();
  const scalar_t* HS = hs.data_ptr<scalar_t>();
  const scalar_t* CS = cs.data_ptr<scalar_t>();
  const scalar_t* X = x.data_ptr<scalar_t>();
  const scalar_t* GO = grad_out.data_ptr<scalar_t>();
  // Scratch rows of one thread (the gate activations, recomputed from the normalised terms:
  // cheaper than keeping them).
  struct Scratch {
    std::vector<scalar_t> act, da, dzn, dzc, dxc, c_scratch;
    explicit Scratch(int64_t H) : act(4 * H), da(4 * H), dzn(4 * H), dzc(H), dxc(H), c_scratch(H) {}
  };
  // Row b of step t: the gradients of its normalised input and recurrent terms into dxr and dzr
  // (4H each), the state gradients passed to step t - 1 (dh_{t-1} zeroed, for the product to add
  // to), the LN parameters' sums into acc.
  auto row = [&](int64_t t, int64_t b, scalar_t* dxr, scalar_t* dzr, scalar_t* acc, Scratch& w) {
    const int64_t cur = (t + 1) % 2, prv = t % 2;
    const int64_t r = b * H, p = t * BH + r, g8 = 8 * p;
    const scalar_t *zr = Z + g8, *zi = Z + g8 + 4 * H;  // the normalised recurrent and input terms
    const scalar_t *dh = DHB + cur * BH + r, *dc = DCB + cur * BH + r;
    scalar_t *dhp = DHB + prv * BH + r, *dcp = DCB + prv * BH + r;
    if (len != nullptr && t >= len[b]) {
      zero_row(dxr, 4 * H);
      zero_row(dzr, 4 * H);
      copy_row(dh, dhp, H);
      copy_row(dc, dcp, H);
      return;
    }
    ln_gates_row(w.act.data(), zi, zr, P.g_ih, P.b_ih, P.g_hh, P.b_hh, CS + p, w.c_scratch.data(), H);
    ln_backward_out_row(dh, GO + p, w.act.data() + 3 * H, ZC + p, P.g_c, P.b_c, w.da.data() + 3 * H, w.dzc.data(),
                        acc + 16 * H, acc + 17 * H, H);
    normalise_backward(ZC + p, w.dzc.data(), RC[t * B + b], H, w.dxc.data());
    ln_backward_cell_row(w.act.data(), dc, w.dxc.data(), CS + p, w.da.data(), w.da.data() + H, w.da.data() + 2 * H,
                         dcp, H);
    // da is the gradient of a = LN_ih(x W_ih^T) + LN_hh(h W_hh^T): back through both
    ln_backward_z_row(w.da.data(), zr, P.g_hh, acc, acc + 4 * H, w.dzn.data(), 4 * H);
    normalise_backward(zr, w.dzn.data(), R[t * B + b], 4 * H, dzr);
    ln_backward_z_row(w.da.data(), zi, P.g_ih, acc + 8 * H, acc + 12 * H, w.dzn.data(), 4 * H);
    normalise_backward(zi, w.dzn.data(), RI[t * B + b], 4 * H, dxr);
    zero_row(dhp, H);
  };
  if (units) {
    // Few sequences and a large W_hh (split_units): per step the rows by sequences, then
    // dh_{t-1} += dZ_t W_hh by columns of dh (each thread its units' columns of W_hh: no thread
    // streams all of it), two parallel regions per step; the gradients of all steps' terms are
    // kept, and dx and the weight gradients are one GEMM each at the end.
    Tensor dzall = at::empty({T, B, 4 * H}, zhh.options()), dxall = at::empty({T, B, 4 * H}, zhh.options());
    scalar_t* DZA = dzall.data_ptr<scalar_t>();
    scalar_t* DXA = dxall.data_ptr<scalar_t>();
    const Tensor W = w_hh.detach();
    const UnitPacks up(w_hh, T, /*backward=*/true);
    for (int64_t t = T - 1; t >= 0; --t) {
      at::parallel_for(0, B, batch_grain(B), [&](int64_t b0, int64_t b1) {
        scalar_t* acc = parts[at::get_thread_num()].data_ptr<scalar_t>();
        Scratch w(H);
        for (int64_t b = b0; b < b1; ++b) row(t, b, DXA + (t * B + b) * 4 * H, DZA + (t * B + b) * 4 * H, acc, w);
      });
      const Tensor dzt = dzall[t];
      Tensor dhprev = dhb[t % 2];
      units_dh_product<scalar_t>(dhprev, dzt, W, up);
    }
    const Tensor dz2 = dzall.view({T * B, 4 * H}), dx2w = dxall.view({T * B, 4 * H});
    Tensor dx2 = dx.view({T * B, I});
    at::mm_out(dx2, dx2w, w_ih.detach());
    acc_atb<scalar_t>(dz2, {{hs.narrow(0, 0, T).reshape({T * B, H}), dwhh_t[0]}});
    // (dW_ih's product on its own dX stays with MKL: the micro-kernel would pack all of dX for a
    // product of I rows only)
    dwih_t[0].addmm_(x.reshape({T * B, I}).t(), dx2w);
  } else at::parallel_for(0, B, batch_grain(B), [&](int64_t b0, int64_t b1) {
    const int64_t Bt = b1 - b0, tid = at::get_thread_num();
    // per-thread sums: [d g_hh | d b_hh | d g_ih | d b_ih (4H each) | d g_c | d b_c (H each)]
    scalar_t* acc = parts[tid].data_ptr<scalar_t>();
    Scratch w(H);
    Tensor dxw = at::empty({Bt, 4 * H}, zhh.options()), dz = at::empty({Bt, 4 * H}, zhh.options());
    StepGrads<scalar_t> products(rec, rin, HS, X, B, H, I, b0, Bt, zhh.options());
    scalar_t* DX = dxw.data_ptr<scalar_t>();
    scalar_t* DZ = dz.data_ptr<scalar_t>();
    Tensor dwhh = dwhh_t[tid], dwih = dwih_t[tid];
    for (int64_t t = T - 1; t >= 0; --t) {
      for (int64_t b = b0; b < b1; ++b) row(t, b, DX + 4 * (b - b0) * H, DZ + 4 * (b - b0) * H, acc, w);
      // dh_{t-1} (= 0, or the pass-through of finished sequences) += dZ W_hh; dx_t; weight sums
      products(t, dxw, dz, dhb[t % 2].narrow(0, b0, Bt), dx[t].narrow(0, b0, Bt), dwhh, dwih);
    }
  });
  dh.copy_(dhb[0]);
  dc.copy_(dcb[0]);
}

std::vector<Tensor> ln_backward(const Tensor& grad_out, const Tensor& grad_hn, const Tensor& grad_cn,
                                const Tensor& x, const Tensor& w_ih, const Tensor& g_ih, const Tensor& b_ih,
                                const Tensor& w_hh, const Tensor& g_hh, const Tensor& b_hh, const Tensor& g_c,
                                const Tensor& b_c, const Tensor& lengths, const Tensor& rih,
                                const Tensor& zhh, const Tensor& rhh, const Tensor& zc, const Tensor& rc,
                                const Tensor& hs, const Tensor& cs) {
  const int64_t T = zhh.size(0), B = zhh.size(1), I = x.size(2), H = w_hh.size(1);
  const int64_t nt = at::get_num_threads();
  auto opts = zhh.options();
  Tensor dh = present(grad_hn) ? grad_hn.contiguous().clone() : at::zeros({B, H}, opts);
  Tensor dc = present(grad_cn) ? grad_cn.contiguous().clone() : at::zeros({B, H}, opts);
  Tensor dx = at::empty({T, B, I}, opts);
  Tensor dwhh_t = at::zeros({nt, H, 4 * H}, opts), dwih_t = at::zeros({nt, I, 4 * H}, opts);
  Tensor parts = at::zeros({nt, 18 * H}, opts);
  const Tensor go = present(grad_out) ? grad_out.contiguous() : at::zeros({T, B, H}, opts);
  const Tensor xc = x.contiguous(), wi = w_ih.contiguous(), w = w_hh.contiguous();
  const LnTensors ln(g_ih, b_ih, g_hh, b_hh, g_c, b_c, H);
  const int64_t* len = present(lengths) ? lengths.data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(zhh.scalar_type(), "ln_backward", [&] {
    ln_backward_loop<scalar_t>(go, xc, wi, w, ln.params<scalar_t>(), len, rih, zhh, rhh, zc, rc, hs, cs, dh, dc,
                               dx, dwhh_t, dwih_t, parts);
  });
  Tensor dw_hh = dwhh_t.sum(0).t().contiguous(), dw_ih = dwih_t.sum(0).t().contiguous();
  Tensor sums = parts.sum(0);
  // dx, dW_ih, d g_ih, d b_ih, dW_hh, dh0, dc0, d g_hh, d b_hh, d g_c, d b_c
  return {dx, dw_ih, sums.narrow(0, 8 * H, 4 * H), sums.narrow(0, 12 * H, 4 * H), dw_hh, dh, dc,
          sums.narrow(0, 0, 4 * H), sums.narrow(0, 4 * H, 4 * H), sums.narrow(0, 16 * H, H), sums.narrow(0, 17 * H, H)};
}

// ---------------------------------------------------------------------------------------------
// The time gate of all steps (before the loop): k = piecewise(phi), phi = ((t - s) mod tau) / tau
// ---------------------------------------------------------------------------------------------
// Phase arithmetic in float64 and without -ffast-math's reassociation, so timestamps as large
// as 1e9 keep their phase. Like phasedlstm.cells.time_gate: tau_e = max(|tau|, 1e-6),
// r = clamp(|r_on|, 1e-6, 1), a true modulo (the result is in [0, tau_e) also for t < s).

#pragma GCC push_options
#pragma GCC optimize("no-fast-math")

constexpr double kTimeEps = 1e-6;

// Per-unit constants of the gate, in float64: tau_e = max(|tau|, eps), r = clamp(|r_on|, eps, 1),
// and the derivatives of those two maps (torch's conventions for abs and clamp at the edges).
struct GateUnits {
  std::vector<double> te, s, r, dte, dr;
  // for the backward: 1 / tau_e, dte / tau_e^2, 2 / r, 2 / r^2 (multiplications in its loop)
  std::vector<double> inv_te, dte_te2, two_r, two_r2;
  template <typename scalar_t>
  GateUnits(const scalar_t* tau, const scalar_t* shift, const scalar_t* r_on, int64_t H)
      : te(H), s(H), r(H), dte(H), dr(H), inv_te(H), dte_te2(H), two_r(H), two_r2(H) {
    for (int64_t j = 0; j < H; ++j) {
      const double t = tau[j], q = r_on[j];
      te[j] = std::max(std::fabs(t), kTimeEps);
      s[j] = shift[j];
      r[j] = std::min(std::max(std::fabs(q), kTimeEps), 1.0);
      dte[j] = std::fabs(t) >= kTimeEps ? (t > 0 ? 1.0 : (t < 0 ? -1.0 : 0.0)) : 0.0;
      dr[j] = (std::fabs(q) >= kTimeEps && std::fabs(q) <= 1.0) ? (q > 0 ? 1.0 : (q < 0 ? -1.0 : 0.0)) : 0.0;
      inv_te[j] = 1.0 / te[j];
      dte_te2[j] = dte[j] / (te[j] * te[j]);
      two_r[j] = 2.0 / r[j];
      two_r2[j] = 2.0 / (r[j] * r[j]);
    }
  }
};

// phi = ((t - s) mod tau_e) / tau_e, equal to torch.remainder (phasedlstm.cells.phase) for every
// finite input. The remainder is exact: with n = floor(u / tau_e), fma(-tau_e, n, u) is u - n tau_e
// rounded once, and that value is representable, so it is exact; a quotient rounded across an
// integer gives n off by one, which one correction by tau_e fixes (again exactly). This holds
// while n is an exact integer of modest size; beyond |u / tau_e| >= 2^50 (timestamps of 1e18 ns,
// or a shift of 1e30, where the old floor-based formula gave phases far outside [0, 1)) the row
// is recomputed with std::fmod and torch's sign rule, which is exact for any size.
constexpr double kFastQuotient = 1125899906842624.0;  // 2^50

static inline double phase_exact(double u, double te) {  // torch.remainder(u, te) / te
  double m = std::fmod(u, te);
  if (m != 0 && m < 0) m += te;  // te > 0
  return m / te;
}

// phi of one timestamp for every unit, into phi (H); true if it is exact for all of them.
static inline bool phase_row_fast(double t, const double* __restrict s, const double* __restrict te,
                                  double* __restrict phi, int64_t H) {
  bool ok = true;
  int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
  // the same operations, 4 units at a time (each one is IEEE-exact, so the result is the scalar
  // loop's to the bit; GCC does not vectorise that loop by itself)
  const __m256d tt = _mm256_set1_pd(t), zero = _mm256_setzero_pd(), big = _mm256_set1_pd(kFastQuotient),
                sign = _mm256_set1_pd(-0.0);
  int small = 0xF;
  for (; j + 4 <= H; j += 4) {
    const __m256d tev = _mm256_loadu_pd(te + j);
    const __m256d u = _mm256_sub_pd(tt, _mm256_loadu_pd(s + j));
    const __m256d q = _mm256_div_pd(u, tev);
    small &= _mm256_movemask_pd(_mm256_cmp_pd(_mm256_andnot_pd(sign, q), big, _CMP_LT_OQ));
    __m256d r = _mm256_fnmadd_pd(tev, _mm256_floor_pd(q), u);
    const __m256d neg = _mm256_cmp_pd(r, zero, _CMP_LT_OQ);
    const __m256d over = _mm256_andnot_pd(neg, _mm256_cmp_pd(r, tev, _CMP_GE_OQ));
    r = _mm256_blendv_pd(r, _mm256_add_pd(r, tev), neg);
    r = _mm256_blendv_pd(r, _mm256_sub_pd(r, tev), over);
    _mm256_storeu_pd(phi + j, _mm256_div_pd(r, tev));
  }
  ok = small == 0xF;
#endif
  for (; j < H; ++j) {
    const double u = t - s[j], q = u / te[j];
    ok &= std::fabs(q) < kFastQuotient;
    double m = std::fma(-te[j], std::floor(q), u);
    m = m < 0 ? m + te[j] : (m >= te[j] ? m - te[j] : m);
    phi[j] = m / te[j];
  }
  return ok;
}

static inline void phase_row(double t, const double* s, const double* te, double* phi, int64_t H) {
  if (!phase_row_fast(t, s, te, phi, H))
    for (int64_t j = 0; j < H; ++j) phi[j] = phase_exact(t - s[j], te[j]);
}

template <typename scalar_t>
static inline void gate_forward_row(const double* __restrict phi, const double* __restrict r, double leak,
                                    scalar_t* __restrict k, int64_t H) {
  int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256d two = _mm256_set1_pd(2.0), half = _mm256_set1_pd(0.5), lk = _mm256_set1_pd(leak);
  for (; j + 4 <= H; j += 4) {  // as the scalar loop below, to the bit
    const __m256d p = _mm256_loadu_pd(phi + j), rr = _mm256_loadu_pd(r + j);
    const __m256d a = _mm256_div_pd(_mm256_mul_pd(two, p), rr);
    const __m256d up = _mm256_cmp_pd(p, _mm256_mul_pd(rr, half), _CMP_LT_OQ);
    const __m256d on = _mm256_cmp_pd(p, rr, _CMP_LT_OQ);
    __m256d v = _mm256_blendv_pd(_mm256_mul_pd(lk, p), _mm256_sub_pd(two, a), on);
    v = _mm256_blendv_pd(v, a, up);
    if constexpr (std::is_same_v<scalar_t, float>) _mm_storeu_ps(k + j, _mm256_cvtpd_ps(v));
    else _mm256_storeu_pd(k + j, v);
  }
#endif
  for (; j < H; ++j) {
    const double p = phi[j];
    k[j] = static_cast<scalar_t>(p < r[j] / 2 ? 2 * p / r[j] : (p < r[j] ? 2 - 2 * p / r[j] : leak * p));
  }
}

// The open units (k > 0) of one row of phases at leak 0, and their k (as gate_forward_row's);
// the k of the others is left as it was. Returns how many are open, listed in `open`.
template <typename scalar_t>
static inline int64_t open_units(const double* __restrict phi, const double* __restrict r, scalar_t* __restrict k,
                                 int64_t* __restrict open, int64_t H) {
  int64_t n = 0;
  for (int64_t j = 0; j < H; ++j) {
    const double p = phi[j];
    if (p < r[j]) {
      const scalar_t v = static_cast<scalar_t>(p < r[j] / 2 ? 2 * p / r[j] : 2 - 2 * p / r[j]);
      if (v != scalar_t(0)) {
        k[j] = v;
        open[n++] = j;
      }
    }
  }
  return n;
}

// One row of the gate's backward: the per-unit sums of d tau, d s, d r_on (added to a_tau, a_s, a_r)
// and the gradient wrt the row's timestamp (returned). Per unit: dk/dphi = 2/r rising, -2/r
// falling, the leak closed; dk/dr = -2 phi/r^2 rising, 2 phi/r^2 falling; dphi/du = 1/tau_e and
// dphi/dtau_e = -(t - s)/tau_e^2 (u = t - s). The per-unit constants come from GateUnits, so the
// loop only multiplies; AVX2 takes 4 units at a time with the scalar loop's operations, and sums
// the timestamp's gradient in 4 lanes (one chain of H dependent additions took a third of the time).
template <typename scalar_t>
static inline double gate_backward_row(double t, const double* __restrict phi, const scalar_t* __restrict dk,
                                       const GateUnits& U, double leak, double* __restrict a_tau,
                                       double* __restrict a_s, double* __restrict a_r, int64_t H) {
  const double *s = U.s.data(), *r = U.r.data(), *it = U.inv_te.data(), *it2 = U.dte_te2.data(),
               *c1 = U.two_r.data(), *c2 = U.two_r2.data(), *drq = U.dr.data();
  int64_t j = 0;
  double d_t = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256d tt = _mm256_set1_pd(t), half = _mm256_set1_pd(0.5), lk = _mm256_set1_pd(leak),
                zero = _mm256_setzero_pd(), sign = _mm256_set1_pd(-0.0);
  __m256d sum = zero;
  for (; j + 4 <= H; j += 4) {
    const __m256d p = _mm256_loadu_pd(phi + j), rr = _mm256_loadu_pd(r + j);
    __m256d g;
    if constexpr (std::is_same_v<scalar_t, float>) g = _mm256_cvtps_pd(_mm_loadu_ps(dk + j));
    else g = _mm256_loadu_pd(dk + j);
    const __m256d u = _mm256_sub_pd(tt, _mm256_loadu_pd(s + j));
    const __m256d up = _mm256_cmp_pd(p, _mm256_mul_pd(rr, half), _CMP_LT_OQ);
    const __m256d on = _mm256_cmp_pd(p, rr, _CMP_LT_OQ);
    const __m256d a1 = _mm256_loadu_pd(c1 + j), a2 = _mm256_mul_pd(p, _mm256_loadu_pd(c2 + j));
    const __m256d dphi = _mm256_blendv_pd(lk, _mm256_blendv_pd(_mm256_xor_pd(a1, sign), a1, up), on);
    const __m256d dr = _mm256_blendv_pd(zero, _mm256_blendv_pd(a2, _mm256_xor_pd(a2, sign), up), on);
    const __m256d gd = _mm256_mul_pd(g, dphi);
    const __m256d d = _mm256_mul_pd(gd, _mm256_loadu_pd(it + j));
    _mm256_storeu_pd(a_tau + j, _mm256_sub_pd(_mm256_loadu_pd(a_tau + j),
                                              _mm256_mul_pd(_mm256_mul_pd(gd, u), _mm256_loadu_pd(it2 + j))));
    _mm256_storeu_pd(a_s + j, _mm256_sub_pd(_mm256_loadu_pd(a_s + j), d));
    _mm256_storeu_pd(a_r + j, _mm256_add_pd(_mm256_loadu_pd(a_r + j),
                                            _mm256_mul_pd(_mm256_mul_pd(g, dr), _mm256_loadu_pd(drq + j))));
    sum = _mm256_add_pd(sum, d);
  }
  // the 4 lanes' sum, written out here: a call of hsum (compiled with -ffast-math, below) from this
  // no-fast-math region might not be inlined (GCC does not inline across differing optimize options)
  const __m128d q = _mm_add_pd(_mm256_castpd256_pd128(sum), _mm256_extractf128_pd(sum, 1));
  d_t = _mm_cvtsd_f64(_mm_add_sd(q, _mm_unpackhi_pd(q, q)));
#endif
  for (; j < H; ++j) {
    const double u = t - s[j], p = phi[j], g = dk[j];
    const bool up = p < r[j] * 0.5, on = p < r[j];
    const double dphi = on ? (up ? c1[j] : -c1[j]) : leak;
    const double dr = on ? (up ? -(p * c2[j]) : p * c2[j]) : 0.0;
    const double gd = g * dphi, d = gd * it[j];
    a_tau[j] = a_tau[j] - (gd * u) * it2[j];
    a_s[j] = a_s[j] - d;
    a_r[j] = a_r[j] + (g * dr) * drq[j];
    d_t += d;
  }
  return d_t;
}

template <typename scalar_t>
void gate_forward_impl(const double* times, int64_t R, const scalar_t* tau, const scalar_t* s, const scalar_t* r_on,
                       double leak, int64_t H, scalar_t* k) {
  const GateUnits u(tau, s, r_on, H);
  at::parallel_for(0, R, std::max<int64_t>(1, 4096 / H), [&](int64_t r0, int64_t r1) {
    std::vector<double> phi(H);
    for (int64_t row = r0; row < r1; ++row) {
      phase_row(times[row], u.s.data(), u.te.data(), phi.data(), H);
      gate_forward_row(phi.data(), u.r.data(), leak, k + row * H, H);
    }
  });
}

template <typename scalar_t>
void gate_backward_impl(const scalar_t* dk, const double* times, int64_t R, const scalar_t* tau, const scalar_t* s,
                        const scalar_t* r_on, double leak, int64_t H, double* parts, double* d_times) {
  const GateUnits u(tau, s, r_on, H);
  at::parallel_for(0, R, std::max<int64_t>(1, 4096 / H), [&](int64_t r0, int64_t r1) {
    double* acc = parts + at::get_thread_num() * 3 * H;  // [d tau | d s | d r_on]
    std::vector<double> phi(H);
    for (int64_t row = r0; row < r1; ++row) {
      phase_row(times[row], u.s.data(), u.te.data(), phi.data(), H);
      d_times[row] = gate_backward_row(times[row], phi.data(), dk + row * H, u, leak, acc, acc + H, acc + 2 * H, H);
    }
  });
}

#pragma GCC pop_options

Tensor time_gate_forward(const Tensor& times, const Tensor& tau, const Tensor& s, const Tensor& r_on, double leak) {
  TORCH_CHECK(times.scalar_type() == at::kDouble, "times must be float64");
  const int64_t H = tau.size(0);
  const Tensor tc = times.contiguous(), ta = tau.contiguous(), sc = s.contiguous(), rc = r_on.contiguous();
  std::vector<int64_t> shape(times.sizes().begin(), times.sizes().end());
  shape.push_back(H);
  Tensor k = at::empty(shape, tau.options());
  AT_DISPATCH_FLOATING_TYPES(tau.scalar_type(), "time_gate_forward", [&] {
    gate_forward_impl<scalar_t>(tc.data_ptr<double>(), tc.numel(), ta.data_ptr<scalar_t>(), sc.data_ptr<scalar_t>(),
                                rc.data_ptr<scalar_t>(), leak, H, k.data_ptr<scalar_t>());
  });
  return k;
}

std::vector<Tensor> time_gate_backward(const Tensor& dk, const Tensor& times, const Tensor& tau, const Tensor& s,
                                       const Tensor& r_on, double leak) {
  const int64_t H = tau.size(0);
  const Tensor dkc = dk.contiguous(), tc = times.contiguous(), ta = tau.contiguous(), sc = s.contiguous(),
               rc = r_on.contiguous();
  Tensor parts = at::zeros({at::get_num_threads(), 3, H}, tau.options().dtype(at::kDouble));
  Tensor d_times = at::empty(times.sizes(), times.options());
  AT_DISPATCH_FLOATING_TYPES(tau.scalar_type(), "time_gate_backward", [&] {
    gate_backward_impl<scalar_t>(dkc.data_ptr<scalar_t>(), tc.data_ptr<double>(), tc.numel(), ta.data_ptr<scalar_t>(),
                                 sc.data_ptr<scalar_t>(), rc.data_ptr<scalar_t>(), leak, H, parts.data_ptr<double>(),
                                 d_times.data_ptr<double>());
  });
  Tensor sums = parts.sum(0).to(tau.scalar_type());
  return {sums[0], sums[1], sums[2], d_times};
}

// ---------------------------------------------------------------------------------------------
// Inference without gradients: one direction of the LSTM / peephole / Phased LSTM, the time gate
// computed inline, and (sparse) only the units whose gate is open
// ---------------------------------------------------------------------------------------------
// At evaluation the Phased LSTM's leak is 0, so a unit whose gate is closed (k_t = 0) keeps h and
// c exactly: the dense loop computes its gates and then multiplies them by 0 (c = 0 c~ + 1 c_prev,
// which is c_prev to the bit while c~ is finite). Here, per step and sequence, the phase of every
// unit gives k_t; only the open units (k_t > 0) get their four rows of the input and recurrent
// products (row-by-row dot products on the weights as stored: nothing is packed, so a call of
// one step costs what its step costs) and their element-wise update, in place; the state of
// every other unit is not touched. With sparse = false every unit is computed (the same row
// products, all rows): what a call of a few steps uses, for the layers without a time gate too.
//
// Inputs: x (T, B, I); times (T,) shared by the batch, (B, T), or empty for the step index (any
// real dtype: float64 is used, and a dtype that cannot hold the values exactly is reported);
// h0, c0 with B * H values; w_ih (4H, I); w_hh (4H, H); b_ih, b_hh (4H,) or empty; w_ci, w_cf,
// w_co (H,) or empty; tau, s, r_on (H,) or empty (no time gate); lengths (B,) int64 or empty.
// Returns ([out (T, B, H), h_n (1, B, H), c_n (1, B, H)], status, open): status 0 = computed;
// 1 = tau, s or r_on not finite; 2 = a timestamp not finite; 3 = timestamps beyond what their
// dtype holds exactly; 4 = x's dtype is not the weights' (nothing computed: the caller's checks
// say what is wrong); 5 = sparse declined (non-finite weights or values that could overflow: the
// caller runs the dense path). open = the unit-steps computed (valid steps only).

#if defined(__AVX2__) && defined(__FMA__)
static inline float hsum(__m256 v) {
  const __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 d = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(d, _mm_movehdup_ps(d)));
}
static inline double hsum(__m256d v) {
  const __m128d q = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(q, _mm_unpackhi_pd(q, q)));
}
#endif

template <typename T>
static inline void dot4(const T* __restrict r0, const T* __restrict r1, const T* __restrict r2,
                        const T* __restrict r3, const T* __restrict v, int64_t n, T& s0, T& s1, T& s2, T& s3) {
  int64_t k = 0;
#if defined(__AVX2__) && defined(__FMA__)
  // four rows against one vector, 8 floats (4 doubles) at a time; the tail below (AVX2, which
  // AVX-512 CPUs have too: one code path, tested wherever the tests run)
  if constexpr (std::is_same_v<T, float>) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (; k + 8 <= n; k += 8) {
      const __m256 x = _mm256_loadu_ps(v + k);
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r0 + k), x, a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(r1 + k), x, a1);
      a2 = _mm256_fmadd_ps(_mm256_loadu_ps(r2 + k), x, a2);
      a3 = _mm256_fmadd_ps(_mm256_loadu_ps(r3 + k), x, a3);
    }
    s0 += hsum(a0);
    s1 += hsum(a1);
    s2 += hsum(a2);
    s3 += hsum(a3);
  } else {
    __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
    for (; k + 4 <= n; k += 4) {
      const __m256d x = _mm256_loadu_pd(v + k);
      a0 = _mm256_fmadd_pd(_mm256_loadu_pd(r0 + k), x, a0);
      a1 = _mm256_fmadd_pd(_mm256_loadu_pd(r1 + k), x, a1);
      a2 = _mm256_fmadd_pd(_mm256_loadu_pd(r2 + k), x, a2);
      a3 = _mm256_fmadd_pd(_mm256_loadu_pd(r3 + k), x, a3);
    }
    s0 += hsum(a0);
    s1 += hsum(a1);
    s2 += hsum(a2);
    s3 += hsum(a3);
  }
#endif
  T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  for (; k < n; ++k) {
    a0 += r0[k] * v[k];
    a1 += r1[k] * v[k];
    a2 += r2[k] * v[k];
    a3 += r3[k] * v[k];
  }
  s0 += a0;
  s1 += a1;
  s2 += a2;
  s3 += a3;
}

template <typename scalar_t>
struct InferArgs {
  const scalar_t *x, *w_ih, *w_hh, *b_ih, *b_hh, *wci, *wcf, *wco;
  const double* times;  // (T,) shared or (B, T), or null: the step index
  bool shared;
  const int64_t* len;
  int64_t T, B, I, H;
  double leak;
  bool sparse;
};

// The pre-activations of unit j's four gate rows for one sequence: b + W_ih x + W_hh h.
template <typename scalar_t>
static inline void unit_gates(const InferArgs<scalar_t>& A, int64_t j, const scalar_t* x, const scalar_t* h,
                              scalar_t* a) {
  const int64_t H = A.H, I = A.I;
  for (int q = 0; q < 4; ++q) a[q] = A.b_ih != nullptr ? A.b_ih[q * H + j] + A.b_hh[q * H + j] : scalar_t(0);
  dot4(A.w_ih + j * I, A.w_ih + (H + j) * I, A.w_ih + (2 * H + j) * I, A.w_ih + (3 * H + j) * I, x, I, a[0], a[1],
       a[2], a[3]);
  dot4(A.w_hh + j * H, A.w_hh + (H + j) * H, A.w_hh + (2 * H + j) * H, A.w_hh + (3 * H + j) * H, h, H, a[0], a[1],
       a[2], a[3]);
}

// Every row: G (4H) = b + W_ih x + W_hh h.
template <typename scalar_t>
static inline void all_gates(const InferArgs<scalar_t>& A, const scalar_t* x, const scalar_t* h, scalar_t* G) {
  const int64_t H = A.H, I = A.I;
  for (int64_t r = 0; r < 4 * H; r += 4) {  // (4H is a multiple of 4)
    scalar_t* g = G + r;
    for (int q = 0; q < 4; ++q) g[q] = A.b_ih != nullptr ? A.b_ih[r + q] + A.b_hh[r + q] : scalar_t(0);
    const scalar_t *wi = A.w_ih + r * I, *wh = A.w_hh + r * H;
    dot4(wi, wi + I, wi + 2 * I, wi + 3 * I, x, I, g[0], g[1], g[2], g[3]);
    dot4(wh, wh + H, wh + 2 * H, wh + 3 * H, h, H, g[0], g[1], g[2], g[3]);
  }
}

template <typename scalar_t>
static inline bool row_finite(const scalar_t* v, int64_t n) {
  bool ok = true;
  for (int64_t j = 0; j < n; ++j) ok &= is_finite_bits(v[j]);
  return ok;
}

// Sparse steps skip the closed units, which is exact while every pre-activation is a number: a
// closed unit's update is multiplied by k = 0, and 0 * finite = 0. Where a pre-activation is NaN
// the reference's 0 * NaN makes the closed units NaN too; so a step whose input row is not finite
// is computed densely (every unit, as the dense loop does), and once a sequence's state holds a
// non-finite value, all its later steps too. (Non-finite weights, and finite values large enough
// for products to overflow, where the result depends on the order of the sums, are declined
// before the loop: the caller runs the dense path.)
template <typename scalar_t, bool PEEP, bool PHASED>
int64_t infer_loop(const InferArgs<scalar_t>& A, const GateUnits* gu, scalar_t* HS, scalar_t* CS, scalar_t* O) {
  const int64_t T = A.T, B = A.B, I = A.I, H = A.H, BH = B * H;
  const bool sparse = PHASED && A.sparse;
  std::vector<int64_t> counts(std::max<int64_t>(1, at::get_num_threads()), 0);
  at::parallel_for(0, B, batch_grain(B), [&](int64_t b0, int64_t b1) {
    std::vector<double> phi(PHASED ? H : 0);
    std::vector<scalar_t> kk(PHASED ? H : 0), G(4 * H), hp(H), cp(H);
    std::vector<scalar_t> ks(PHASED ? H : 0), hs(H), cs(H), pw(PEEP ? 3 * H : 0);  // (the open units, gathered)
    std::vector<int64_t> open(H);
    std::vector<char> dense_from_now(b1 - b0, 0);  // sparse: a sequence whose state is not all finite
    if (sparse)
      for (int64_t b = b0; b < b1; ++b)
        if (!row_finite(HS + b * H, H) || !row_finite(CS + b * H, H)) dense_from_now[b - b0] = 1;
    int64_t n_open = 0, computed = 0;
    bool full_k = !sparse;  // whether kk holds every unit's k for the current phase row
    auto gate_row = [&](double t) {  // k of every unit at time t (sparse: of the open ones, listed)
      phase_row(t, gu->s.data(), gu->te.data(), phi.data(), H);
      if (sparse) {
        n_open = open_units(phi.data(), gu->r.data(), kk.data(), open.data(), H);
        full_k = false;
      } else {
        gate_forward_row(phi.data(), gu->r.data(), A.leak, kk.data(), H);
      }
    };
    for (int64_t t = 0; t < T; ++t) {
      if (PHASED && A.shared) gate_row(A.times != nullptr ? A.times[t] : double(t));
      for (int64_t b = b0; b < b1; ++b) {
        scalar_t *h = HS + b * H, *c = CS + b * H, *o = O + t * BH + b * H;
        if (A.len != nullptr && t >= A.len[b]) {  // past the end: state kept, output zero
          zero_row(o, H);
          continue;
        }
        if (PHASED && !A.shared) gate_row(A.times != nullptr ? A.times[b * T + t] : double(t));
        const scalar_t* xt = A.x + (t * B + b) * I;
        const bool dense_step = !sparse || dense_from_now[b - b0] || !row_finite(xt, I);
        if (!dense_step) {
          // the open units' pre-activations first (they read the previous h of every unit), then
          // their updates: gathered into rows of n_open units (G holds i, f, g, o of the open units
          // one after the other), forward_row over those rows at once (vectorised, as the dense
          // loop's), the new h and c scattered back; every closed unit keeps h and c
          scalar_t* a = G.data();
          const int64_t n = n_open;
          for (int64_t u = 0; u < n; ++u) {
            const int64_t j = open[u];
            scalar_t a4[4];
            unit_gates(A, j, xt, h, a4);
            a[u] = a4[0];
            a[n + u] = a4[1];
            a[2 * n + u] = a4[2];
            a[3 * n + u] = a4[3];
            hp[u] = h[j];
            cp[u] = c[j];
            if (PHASED) ks[u] = kk[j];
            if (PEEP) {
              pw[u] = A.wci[j];
              pw[n + u] = A.wcf[j];
              pw[2 * n + u] = A.wco[j];
            }
          }
          forward_row<scalar_t, PEEP, PHASED, false>(a, a + n, a + 2 * n, a + 3 * n, hp.data(), cp.data(),
                                                     hs.data(), cs.data(), nullptr, PEEP ? pw.data() : nullptr,
                                                     PEEP ? pw.data() + n : nullptr, PEEP ? pw.data() + 2 * n : nullptr,
                                                     PHASED ? ks.data() : nullptr, n);
          bool ok = true;
          for (int64_t u = 0; u < n; ++u) {
            const int64_t j = open[u];
            h[j] = hs[u];
            c[j] = cs[u];
            ok &= is_finite_bits(hs[u]) & is_finite_bits(cs[u]);
          }
          if (!ok) dense_from_now[b - b0] = 1;
          computed += n_open;
        } else {
          if (sparse && !full_k) {  // every unit's k for this phase row (at leak 0 the closed ones get 0)
            gate_forward_row(phi.data(), gu->r.data(), A.leak, kk.data(), H);
            full_k = A.shared;  // (per-sample rows are recomputed for the next sequence anyway)
          }
          all_gates(A, xt, h, G.data());
          copy_row(h, hp.data(), H);  // (forward_row's inputs and outputs must not alias)
          copy_row(c, cp.data(), H);
          forward_row<scalar_t, PEEP, PHASED, false>(G.data(), G.data() + H, G.data() + 2 * H, G.data() + 3 * H,
                                                     hp.data(), cp.data(), h, c, nullptr, A.wci, A.wcf, A.wco,
                                                     PHASED ? kk.data() : nullptr, H);
          if (sparse && (!row_finite(h, H) || !row_finite(c, H))) dense_from_now[b - b0] = 1;
          computed += H;
        }
        copy_row(h, o, H);
      }
    }
    counts[at::get_thread_num()] += computed;
  });
  int64_t total = 0;
  for (int64_t v : counts) total += v;
  return total;
}

std::tuple<std::vector<Tensor>, int64_t, int64_t> infer_forward(
    const Tensor& x, const Tensor& times, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& b_ih, const Tensor& b_hh, const Tensor& w_ci, const Tensor& w_cf, const Tensor& w_co,
    const Tensor& tau, const Tensor& s, const Tensor& r_on, double leak, const Tensor& lengths, bool sparse,
    at::ArrayRef<double> bounds) {
  TORCH_CHECK(bounds.size() == 3, "bounds must hold 3 values");
  TORCH_CHECK(x.dim() == 3, "x must be (T, B, I)");
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(1);
  TORCH_CHECK(w_ih.size(0) == 4 * H && w_hh.size(0) == 4 * H && w_ih.size(1) == I, "weights do not fit");
  TORCH_CHECK(h0.numel() == B * H && c0.numel() == B * H, "h0 and c0 must hold B * H values");
  const bool phased = present(tau), peephole = present(w_ci);
  std::vector<Tensor> none;
  if (x.scalar_type() != w_ih.scalar_type() || h0.scalar_type() != w_ih.scalar_type() ||
      c0.scalar_type() != w_ih.scalar_type())
    return {none, 4, 0};
  Tensor t64;
  if (present(times)) {  // checked for every layer (as the reference does); used by the time gate
    TORCH_CHECK(times.numel() == T || times.numel() == B * T, "times must be (T,) or (B, T)");
    const auto dt = times.scalar_type();
    t64 = (dt == at::kDouble ? times : times.to(at::kDouble)).contiguous();
    const double* tp = t64.data_ptr<double>();
    const int64_t n = t64.numel();
    double top = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (!is_finite_bits(tp[i])) return {none, 2, 0};
      top = std::max(top, std::fabs(tp[i]));
    }
    const double exact = dt == at::kFloat ? 16777216.0 : dt == at::kHalf ? 2048.0
                       : dt == at::kBFloat16 ? 256.0 : dt == at::kLong ? 9007199254740992.0 : -1.0;
    if (exact >= 0 && top > exact) return {none, 3, 0};
  }
  const bool use_sparse = sparse && phased && leak == 0.0;
  if (use_sparse) {
    // status 5: weights not finite, or values so large that a sum of products could overflow (a
    // bound of every pre-activation: max|W_ih| max|x| I + max|W_hh| max(1, max|h_0|) H + max|b|;
    // an update keeps |h| within max(1, max|h_0|)). NaN or inf inputs and states are handled inside.
    const double limit = x.scalar_type() == at::kFloat ? 1.0e36 : 1.0e300;
    bool ok = is_finite_bits(bounds[0]) && is_finite_bits(bounds[1]) && is_finite_bits(bounds[2]);
    double xmax = 0, hmax = 1;
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "infer_bounds", [&] {
      const Tensor xc = x.contiguous(), hc = h0.contiguous();
      const scalar_t *px = xc.data_ptr<scalar_t>(), *ph = hc.data_ptr<scalar_t>();
      for (int64_t i = 0, n = xc.numel(); i < n; ++i)
        if (is_finite_bits(px[i])) xmax = std::max<double>(xmax, std::fabs(double(px[i])));
      for (int64_t i = 0, n = hc.numel(); i < n; ++i)
        if (is_finite_bits(ph[i])) hmax = std::max<double>(hmax, std::fabs(double(ph[i])));
    });
    const double bound = bounds[0] * xmax * double(I) + bounds[1] * hmax * double(H) + bounds[2];
    if (!ok || !is_finite_bits(bound) || !(bound < limit)) return {none, 5, 0};
  }
  auto opts = x.options();
  Tensor out = at::empty({T, B, H}, opts);
  Tensor hn = h0.reshape({1, B, H}).clone(at::MemoryFormat::Contiguous);
  Tensor cn = c0.reshape({1, B, H}).clone(at::MemoryFormat::Contiguous);
  const Tensor xc = x.contiguous(), wi = w_ih.contiguous(), w = w_hh.contiguous();
  const bool bias = present(b_ih);
  const Tensor bi = bias ? b_ih.contiguous() : b_ih, bh = bias ? b_hh.contiguous() : b_hh;
  const Tensor pi = peephole ? w_ci.contiguous() : w_ci, pf = peephole ? w_cf.contiguous() : w_cf,
               po = peephole ? w_co.contiguous() : w_co;
  const int64_t* len = present(lengths) ? lengths.data_ptr<int64_t>() : nullptr;
  int64_t status = 0, computed = 0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "infer_forward", [&] {
    std::unique_ptr<GateUnits> gu;
    if (phased) {
      const Tensor ta = tau.contiguous(), sc = s.contiguous(), rc = r_on.contiguous();
      const scalar_t *pt = ta.data_ptr<scalar_t>(), *ps = sc.data_ptr<scalar_t>(), *pr = rc.data_ptr<scalar_t>();
      for (int64_t j = 0; j < H; ++j)
        if (!is_finite_bits(pt[j]) || !is_finite_bits(ps[j]) || !is_finite_bits(pr[j])) status = 1;
      if (status == 0) gu = std::make_unique<GateUnits>(pt, ps, pr, H);
    }
    if (status != 0) return;
    InferArgs<scalar_t> A{xc.data_ptr<scalar_t>(), wi.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                          bias ? bi.data_ptr<scalar_t>() : nullptr, bias ? bh.data_ptr<scalar_t>() : nullptr,
                          peephole ? pi.data_ptr<scalar_t>() : nullptr, peephole ? pf.data_ptr<scalar_t>() : nullptr,
                          peephole ? po.data_ptr<scalar_t>() : nullptr,
                          t64.defined() ? t64.data_ptr<double>() : nullptr, !t64.defined() || t64.numel() == T, len,
                          T, B, I, H, leak, use_sparse};
    scalar_t *HS = hn.data_ptr<scalar_t>(), *CS = cn.data_ptr<scalar_t>(), *O = out.data_ptr<scalar_t>();
    if (phased && peephole) computed = infer_loop<scalar_t, true, true>(A, gu.get(), HS, CS, O);
    else if (phased) computed = infer_loop<scalar_t, false, true>(A, gu.get(), HS, CS, O);
    else if (peephole) computed = infer_loop<scalar_t, true, false>(A, nullptr, HS, CS, O);
    else computed = infer_loop<scalar_t, false, false>(A, nullptr, HS, CS, O);
  });
  if (status != 0) return {none, status, 0};
  return {{out, hn, cn}, 0, computed};
}

// The same forwards for graphs (torch.compile, torch.export): no output aliases another (eager
// returns the output as a view of the saved states, and in inference h_n as the state buffer
// itself, to save memory; a compiler that may reuse one output's buffer must never see that).
// Outputs as lstm_forward / ln_forward (always 6 / 10 of them); what inference does not keep is empty.
// Copies the first `outputs` results (what the caller sees) wherever they share memory with another.
std::vector<Tensor> unalias(std::vector<Tensor> r, size_t outputs) {
  for (size_t j = 0; j < outputs; ++j)
    for (size_t i = 0; i < r.size(); ++i)
      if (i != j && r[i].numel() && r[j].numel() && r[j].is_alias_of(r[i])) {
        r[j] = r[j].clone();
        break;
      }
  return r;
}

std::vector<Tensor> lstm_forward_graph(const Tensor& x, const Tensor& w_ih, const Tensor& bias, const Tensor& w_hh,
                                       const Tensor& h0, const Tensor& c0, const Tensor& peep, const Tensor& k,
                                       const Tensor& lengths, bool save) {
  auto r = lstm_forward(x, w_ih, bias, w_hh, h0, c0, peep, k, lengths, save);
  if (!save) {  // h_n, c_n are the state buffers themselves: drop those from the saved slots
    r[4] = at::empty({0}, r[4].options());
    r[5] = at::empty({0}, r[5].options());
  }
  return unalias(r, 3);
}

std::vector<Tensor> ln_forward_graph(const Tensor& x, const Tensor& w_ih, const Tensor& g_ih, const Tensor& b_ih,
                                     const Tensor& w_hh, const Tensor& h0, const Tensor& c0, const Tensor& g_hh,
                                     const Tensor& b_hh, const Tensor& g_c, const Tensor& b_c, const Tensor& lengths,
                                     bool save) {
  auto r = ln_forward(x, w_ih, g_ih, b_ih, w_hh, h0, c0, g_hh, b_hh, g_c, b_c, lengths, save);
  if (!save) {  // inference keeps nothing: the same 10 slots as training, empty
    while (r.size() < 10) r.push_back(at::empty({0}, x.options()));
  }
  return unalias(r, 3);
}

// The micro-kernel's own rate on the calling thread, for the benchmark's reference: C (M x N) +=
// A (M x K) B (K x N), B packed once and small enough for the core's L2, best of `repeats` timed
// calls, in GFLOP/s; 0 where there is no micro-kernel (float64 and CPUs without AVX2 use at::addmm).
double micro_kernel_gflops(int64_t M, int64_t K, int64_t N, int64_t repeats) {
  if (!kHavePacked || M <= 0 || K <= 0 || N <= 0) return 0.0;
  const Tensor a = at::randn({M, K}), w = at::randn({N, K});
  Tensor c = at::zeros({M, N});
  const PackedB b = pack_b(w, K, N, /*sk=*/1, /*sn=*/K);
  double best = std::numeric_limits<double>::infinity();
  for (int64_t r = 0; r < std::max<int64_t>(1, repeats) + 1; ++r) {  // (the first call warms up)
    const auto t0 = std::chrono::steady_clock::now();
    gemm_acc(M, a.data_ptr<float>(), K, b, c.data_ptr<float>(), N);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r > 0) best = std::min(best, s);
  }
  return 2.0 * M * K * N / best / 1e9;
}

// C += A^T B (and, with bias defined, bias += the column sums of B) as a backward computes its
// weight gradients over all steps, in chunks of `chunk` rows of K (0: the default). For the tests
// and the benchmark (PHASEDLSTM_ATB=0: at::addmm_, i.e. MKL).
void atb_acc(Tensor C, const Tensor& A, const Tensor& B, Tensor bias, int64_t chunk) {
  TORCH_CHECK(C.scalar_type() == at::kFloat && A.scalar_type() == at::kFloat && B.scalar_type() == at::kFloat,
              "atb_acc: float32 only");
  TORCH_CHECK(A.dim() == 2 && B.dim() == 2 && C.dim() == 2 && A.size(0) == B.size(0) && C.size(0) == A.size(1) &&
                  C.size(1) == B.size(1),
              "atb_acc: expected A (K, M), B (K, N), C (M, N); got ", A.sizes(), ", ", B.sizes(), ", ", C.sizes());
  std::vector<std::pair<Tensor, Tensor>> parts = {{A, C}};
  if (bias.defined() && bias.numel() > 0) parts.push_back({Tensor(), bias});
  acc_atb<float>(B, parts, chunk);
}

}  // namespace

TORCH_LIBRARY(phasedlstm_fused, m) {
  m.def("micro_kernel_gflops(int M, int K, int N, int repeats) -> float", &micro_kernel_gflops);
  m.def("atb_acc(Tensor(a!) C, Tensor A, Tensor B, Tensor(b!) bias, int chunk) -> ()", &atb_acc);
  m.def("time_gate_forward(Tensor times, Tensor tau, Tensor s, Tensor r_on, float leak) -> Tensor");
  m.def("time_gate_backward(Tensor dk, Tensor times, Tensor tau, Tensor s, Tensor r_on, float leak) -> Tensor[]");
  m.def("lstm_forward(Tensor x, Tensor w_ih, Tensor bias, Tensor w_hh, Tensor h0, Tensor c0, Tensor peep, Tensor k, "
        "Tensor lengths, bool save) -> Tensor[]");
  m.def("lstm_backward(Tensor grad_out, Tensor grad_hn, Tensor grad_cn, Tensor x, Tensor w_ih, Tensor w_hh, "
        "Tensor peep, Tensor k, Tensor lengths, Tensor acts, Tensor hs, Tensor cs) -> Tensor[]");
  m.def("ln_forward(Tensor x, Tensor w_ih, Tensor g_ih, Tensor b_ih, Tensor w_hh, Tensor h0, Tensor c0, "
        "Tensor g_hh, Tensor b_hh, Tensor g_c, Tensor b_c, Tensor lengths, bool save) -> Tensor[]");
  m.def("lstm_forward_graph(Tensor x, Tensor w_ih, Tensor bias, Tensor w_hh, Tensor h0, Tensor c0, Tensor peep, "
        "Tensor k, Tensor lengths, bool save) -> Tensor[]");
  m.def("ln_forward_graph(Tensor x, Tensor w_ih, Tensor g_ih, Tensor b_ih, Tensor w_hh, Tensor h0, Tensor c0, "
        "Tensor g_hh, Tensor b_hh, Tensor g_c, Tensor b_c, Tensor lengths, bool save) -> Tensor[]");
  m.def("infer_forward(Tensor x, Tensor times, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor b_ih, "
        "Tensor b_hh, Tensor w_ci, Tensor w_cf, Tensor w_co, Tensor tau, Tensor s, Tensor r_on, float leak, "
        "Tensor lengths, bool sparse, float[] bounds) -> (Tensor[], int, int)");
  m.def("ln_backward(Tensor grad_out, Tensor grad_hn, Tensor grad_cn, Tensor x, Tensor w_ih, Tensor g_ih, "
        "Tensor b_ih, Tensor w_hh, Tensor g_hh, Tensor b_hh, Tensor g_c, Tensor b_c, Tensor lengths, "
        "Tensor rih, Tensor zhh, Tensor rhh, Tensor zc, Tensor rc, Tensor hs, Tensor cs) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(phasedlstm_fused, CPU, m) {
  m.impl("time_gate_forward", &time_gate_forward);
  m.impl("time_gate_backward", &time_gate_backward);
  m.impl("lstm_forward", &lstm_forward);
  m.impl("lstm_backward", &lstm_backward);
  m.impl("ln_forward", &ln_forward);
  m.impl("ln_backward", &ln_backward);
  m.impl("lstm_forward_graph", &lstm_forward_graph);
  m.impl("ln_forward_graph", &ln_forward_graph);
  m.impl("infer_forward", &infer_forward);
}
