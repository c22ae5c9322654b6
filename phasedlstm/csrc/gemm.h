// The recurrent products: a register-blocked GEMM micro-kernel on weights packed once per call,
// and the weight gradients over all steps (C += A^T B).
#pragma once

#include "common.h"

namespace phasedlstm {

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
constexpr int kPanelVecs = 4;
#else
constexpr int64_t kNR = 16;  // panel width: 2 ymm registers
constexpr int kPanelVecs = 2;
#endif
constexpr int64_t kTailStep = 16;  // the last panel's width is a multiple of this (AVX2: always kNR)

// Panels of kNR columns, K rows each; the last panel is only as wide as N needs, rounded up to a
// whole vector (tail columns: 16, 32, 48 or 64 with AVX-512), and zero-padded to that width. A
// partial panel padded to 64 would make the products read up to 48 columns of zeros per row of K:
// at H = 650 split over two threads, 12% more of W_hh streamed from L3 by one thread than by the
// other.
struct PackedB {
  Tensor data;  // the panels, one after the other: (panels - 1) x (K, kNR), then (K, tail)
  int64_t K = 0, N = 0, tail = 0;
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

// The width of a packed B's last panel, and the floats of the whole pack
inline int64_t packed_tail(int64_t N) {
  const int64_t last = N - (N + kNR - 1) / kNR * kNR + kNR;
  return std::min(kNR, (last + kTailStep - 1) / kTailStep * kTailStep);
}
inline int64_t packed_size(int64_t K, int64_t N) { return ((N + kNR - 1) / kNR * kNR - kNR + packed_tail(N)) * K; }

// Rows k_begin .. k_end-1 of a packed B (K x N, panels at d0) from s, where B[k][n] = s[n * sn + (k - k_begin) * sk]
inline void pack_rows(const float* s, int64_t sk, int64_t sn, int64_t k_begin, int64_t k_end, int64_t K, int64_t N,
                      int64_t tail, float* d0) {
  const int64_t panels = (N + kNR - 1) / kNR;
  for (int64_t q = 0; q < panels; ++q) {
    const int64_t nc = std::min(kNR, N - q * kNR), w = q + 1 < panels ? kNR : tail;
    float* d = d0 + q * K * kNR;
    int64_t k0 = k_begin;
#if defined(__AVX2__)
    if (sk == 1 && nc == w && w % 8 == 0) {  // rows of W along k: by 8 x 8 transposes (the scalar loop's strided
      // reads were 10% of a forward-only call of T = 8 at H = 1024)
      for (; k0 + 8 <= k_end; k0 += 8)
        for (int64_t c = 0; c < w; c += 8) transpose8(s + (q * kNR + c) * sn + k0 - k_begin, sn, d + k0 * w + c, w);
    }
#endif
    for (int64_t k = k0; k < k_end; ++k) {
      float* dk = d + k * w;
      for (int64_t c = 0; c < nc; ++c) dk[c] = s[(q * kNR + c) * sn + (k - k_begin) * sk];
      for (int64_t c = nc; c < w; ++c) dk[c] = 0;  // the last panel's padding
    }
  }
}

// An unwritten pack of a K x N B, in dst (packed_size(K, N) floats) or new memory
inline PackedB empty_pack(int64_t K, int64_t N, const at::TensorOptions& opts, const Tensor& dst = Tensor()) {
  return PackedB{dst.defined() ? dst : at::empty({packed_size(K, N)}, opts), K, N, packed_tail(N)};
}

// Pack B (K x N) where B[k][n] = src[n * sn + k * sk], into dst (packed_size(K, N) floats) or new memory.
inline PackedB pack_b(const Tensor& src, int64_t K, int64_t N, int64_t sk, int64_t sn, const Tensor& dst = Tensor()) {
  PackedB p = empty_pack(K, N, src.options(), dst);
  pack_rows(src.data_ptr<float>(), sk, sn, 0, K, K, N, p.tail, p.data.data_ptr<float>());
  return p;
}

// Pack [A | B]^T for row-major A (N x Ka) and B (N x Kb), both contiguous: K = Ka + Kb (the input and
// recurrent weights of one product, without concatenating them first)
inline PackedB pack_b_cat(const Tensor& a, const Tensor& b) {
  const int64_t Ka = a.size(1), Kb = b.size(1), N = a.size(0);
  PackedB p = empty_pack(Ka + Kb, N, a.options());
  pack_rows(a.data_ptr<float>(), 1, Ka, 0, Ka, p.K, N, p.tail, p.data.data_ptr<float>());
  pack_rows(b.data_ptr<float>(), 1, Kb, Ka, p.K, p.K, N, p.tail, p.data.data_ptr<float>());
  return p;
}

#if defined(__AVX512F__)
constexpr bool kHavePacked = true;

// FULL: all 64 columns valid (plain loads; masked loads are several times slower on some
// CPUs, so only the last, partial panel uses them). BFULL: B's rows are whole panels even where C's
// are not (a packed B is padded with zeros to a whole vector), so B is read without masks.
// NV: vectors of 16 columns per row (4; fewer for a packed B's narrow last panel).
// init: if not null, C is not read; every row starts from init (a bias vector) instead.
template <int MR, bool FULL, bool BFULL = FULL, int NV = 4>
static inline void micro_tile(int64_t K, const float* __restrict A, int64_t lda, const float* __restrict Bp,
                              int64_t ldb, float* __restrict C, int64_t ldc, int64_t ncols,
                              const float* __restrict init, const float* = nullptr) {
  __m512 acc[MR][NV];
  __mmask16 mask[NV];
  for (int j = 0; j < NV; ++j) {
    const int64_t left = ncols - 16 * j;
    mask[j] = left >= 16 ? (__mmask16)0xFFFF : (left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1));
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NV; ++j) {
      const float* src = init != nullptr ? init + 16 * j : C + r * ldc + 16 * j;
      acc[r][j] = FULL ? _mm512_loadu_ps(src) : _mm512_maskz_loadu_ps(mask[j], src);
    }
  for (int64_t k = 0; k < K; ++k) {
    const float* b = Bp + k * ldb;  // masked in a partial panel: a row-major B may end inside it
    __m512 bv[NV];
    for (int j = 0; j < NV; ++j)
      bv[j] = FULL || BFULL ? _mm512_loadu_ps(b + 16 * j) : _mm512_maskz_loadu_ps(mask[j], b + 16 * j);
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(A[r * lda + k]);
      for (int j = 0; j < NV; ++j) acc[r][j] = _mm512_fmadd_ps(a, bv[j], acc[r][j]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NV; ++j) {
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
template <int MR, bool FULL, bool BFULL = FULL, int NV = 2>  // (NV: always the whole panel here)
static inline void micro_tile(int64_t K, const float* __restrict A, int64_t lda, const float* __restrict Bp,
                              int64_t ldb, float* __restrict C, int64_t ldc, int64_t ncols,
                              const float* __restrict init, const float* pf = nullptr) {
  static_assert(NV == 2, "the AVX2 tile is 16 columns wide");
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
    const __m256 b0 = BFULL ? _mm256_loadu_ps(b) : load(b, 0), b1 = BFULL ? _mm256_loadu_ps(b + 8) : load(b + 8, 1);
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
template <bool FULL, bool BFULL = FULL, int NV = kPanelVecs>
inline void micro_rows(int64_t M, int64_t K, const float* A, int64_t lda, const float* bq, int64_t ldb, float* cq,
                       int64_t ldc, int64_t ncols, const float* init, const float* prefetch = nullptr) {
  int64_t m = 0;
  for (; m + 6 <= M; m += 6)
    micro_tile<6, FULL, BFULL, NV>(K, A + m * lda, lda, bq, ldb, cq + m * ldc, ldc, ncols, init,
                                   m == 6 ? prefetch : nullptr);
  switch (M - m) {
    case 5: micro_tile<5, FULL, BFULL, NV>(K, A + m * lda, lda, bq, ldb, cq + m * ldc, ldc, ncols, init); break;
    case 4: micro_tile<4, FULL, BFULL, NV>(K, A + m * lda, lda, bq, ldb, cq + m * ldc, ldc, ncols, init); break;
    case 3: micro_tile<3, FULL, BFULL, NV>(K, A + m * lda, lda, bq, ldb, cq + m * ldc, ldc, ncols, init); break;
    case 2: micro_tile<2, FULL, BFULL, NV>(K, A + m * lda, lda, bq, ldb, cq + m * ldc, ldc, ncols, init); break;
    case 1: micro_tile<1, FULL, BFULL, NV>(K, A + m * lda, lda, bq, ldb, cq + m * ldc, ldc, ncols, init); break;
    default: break;
  }
}

// C (M x N) += A (M x K) B (K x N); B is packed (packed = true: a PackedB's panels, panel_stride = K * kNR,
// ldb = kNR, and tail_ld the last panel's width) or row-major (panel_stride = kNR, ldb = its row
// stride). Rows of A and C have strides lda and ldc.
// With init (an N-vector), C = init + A B instead: C is written, never read.
inline void gemm_acc_any(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* Bq0,
                         int64_t panel_stride, int64_t ldb, float* C, int64_t ldc, const float* init = nullptr,
                         int64_t kblock = 0, bool packed = false, int64_t tail_ld = kNR, bool reverse = false) {
  const int64_t panels = (N + kNR - 1) / kNR;
  // by blocks of K rows only where asked (see UnitPacks) and B is packed; otherwise one block of all K
  const bool blocked = kblock > 0 && M > 6 && packed;
  const int64_t kstep = blocked ? kblock : std::max<int64_t>(K, 1);
  for (int64_t i = 0; i < panels; ++i) {  // reverse: the last panel first
    const int64_t q = reverse ? panels - 1 - i : i, qn = reverse ? q - 1 : q + 1;
    const float* bq = Bq0 + q * panel_stride;
    const int64_t ncols = std::min(kNR, N - q * kNR);
    // packed: the last panel is tail_ld wide, zero-padded past N, read without masks
    const int64_t ld = packed && q + 1 == panels ? tail_ld : ldb;
    float* cq = C + q * kNR;
    for (int64_t k0 = 0; k0 == 0 || k0 < K; k0 += kstep) {
      const int64_t kb = std::min(kstep, K - k0);
      // the lines of the next block of B (this panel's next rows of K, or the next panel's first),
      // fetched while the second tile of rows reads this block from cache
      const float* next =
          !blocked ? nullptr : (k0 + kb < K ? bq + (k0 + kb) * ld : (i + 1 < panels ? Bq0 + qn * panel_stride : nullptr));
      const float* iq = init != nullptr && k0 == 0 ? init + q * kNR : nullptr;
      const float* bk = bq + k0 * ld;
      if (ncols == kNR) micro_rows<true>(M, kb, A + k0, lda, bk, ld, cq, ldc, ncols, iq, next);
      else if (!packed) micro_rows<false>(M, kb, A + k0, lda, bk, ld, cq, ldc, ncols, iq, next);
#if defined(__AVX512F__)
      else if (ld == 16) micro_rows<false, true, 1>(M, kb, A + k0, lda, bk, ld, cq, ldc, ncols, iq, next);
      else if (ld == 32) micro_rows<false, true, 2>(M, kb, A + k0, lda, bk, ld, cq, ldc, ncols, iq, next);
      else if (ld == 48) micro_rows<false, true, 3>(M, kb, A + k0, lda, bk, ld, cq, ldc, ncols, iq, next);
#endif
      else micro_rows<false, true>(M, kb, A + k0, lda, bk, ld, cq, ldc, ncols, iq, next);
    }
  }
}

// reverse: B's panels from the last to the first. A loop that multiplies by the same B at every step
// and alternates the direction reads first what the previous step read last, still in L2 where B is
// larger than L2 (W_hh at H >= 512).
inline void gemm_acc(int64_t M, const float* A, int64_t lda, const PackedB& B, float* C, int64_t ldc,
                     const float* init = nullptr, int64_t kblock = 0, bool reverse = false) {
  gemm_acc_any(M, B.N, B.K, A, lda, B.data.data_ptr<float>(), B.K * kNR, kNR, C, ldc, init, kblock, /*packed=*/true,
               B.tail, reverse);
}

#else
constexpr bool kHavePacked = false;
inline void gemm_acc(int64_t, const float*, int64_t, const PackedB&, float*, int64_t, const float* = nullptr,
                     int64_t = 0, bool = false) {}
inline void gemm_acc_any(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, int64_t, float*,
                         int64_t, const float* = nullptr, int64_t = 0, bool = false) {}
#endif

// options().packed = false switches the micro-kernel off (at::addmm_ for every product): the tests
// run both paths, the benchmarks compare them.
inline bool packed_enabled() { return options().packed; }

// C (M x N, contiguous rows) += A (M x K, row stride K) B (K x N, row stride N), on this thread
template <typename scalar_t>
inline void acc_ab_rows(Tensor& C, int64_t M, int64_t K, const scalar_t* A, const scalar_t* B) {
  const int64_t N = C.size(1);
  if constexpr (std::is_same_v<scalar_t, float>) {
    // (not on AVX2: there the weight gradients' products, on a row-major dG that is not packed,
    // were slower than MKL's: (256, 100, 32, 256) LSTM training 0.77x -> 0.94x torch.nn.LSTM)
    if (kHavePacked && kNR == 64 && packed_enabled()) {
      gemm_acc_any(M, N, K, A, K, B, kNR, N, C.data_ptr<float>(), C.stride(0));
      return;
    }
  }
  const auto opts = C.options();
  C.addmm_(at::from_blob(const_cast<scalar_t*>(A), {M, K}, opts), at::from_blob(const_cast<scalar_t*>(B), {K, N}, opts));
}

// dst (n x m) = src (m x n)^T, src rows of stride lds
template <typename scalar_t>
inline void transpose_into(const scalar_t* src, int64_t m, int64_t n, int64_t lds, scalar_t* dst) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) dst[j * m + i] = src[i * lds + j];
}

}  // namespace phasedlstm
