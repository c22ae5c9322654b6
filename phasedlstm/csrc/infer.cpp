// Inference without gradients of the LSTM, peephole LSTM and Phased LSTM.
#include "schedule.h"
#include "time_gate.h"
#include "ops.h"

namespace phasedlstm {

// ---------------------------------------------------------------------------------------------
// Inference without gradients: one direction of the LSTM / peephole / Phased LSTM, the time gate
// computed inline, and (sparse) only the units whose gate is open
// ---------------------------------------------------------------------------------------------
// At evaluation the Phased LSTM's leak is 0, so a unit whose gate is closed (k_t = 0) keeps h and
// c exactly: the dense loop computes its gates and then multiplies them by 0 (c = 0 c~ + 1 c_prev,
// which is c_prev to the bit while c~ is finite). Here, per step and sequence, the units whose gate
// is open (k_t > 0; open_units_due examines only those whose phase can have wrapped since they
// were last seen closed) get their four rows of the input and recurrent products (row-by-row dot
// products on the weights as stored: nothing is packed, so a call of one step costs what its
// step costs) and their element-wise update; the state of every other unit is not touched. With
// sparse = false every unit is computed (the same row products, all rows): what a call of a few
// steps uses, for the layers without a time gate too.
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

#if defined(__AVX512F__)
// One AVX-512 register of floats or doubles, for the dot products below.
struct Floats16 {
  using T = float;
  using V = __m512;
  using M = __mmask16;
  static constexpr int64_t N = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const T* p) { return _mm512_loadu_ps(p); }
  static V load(M m, const T* p) { return _mm512_maskz_loadu_ps(m, p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static T sum(V v) { return _mm512_reduce_add_ps(v); }
};
struct Doubles8 {
  using T = double;
  using V = __m512d;
  using M = __mmask8;
  static constexpr int64_t N = 8;
  static V zero() { return _mm512_setzero_pd(); }
  static V load(const T* p) { return _mm512_loadu_pd(p); }
  static V load(M m, const T* p) { return _mm512_maskz_loadu_pd(m, p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static T sum(V v) { return _mm512_reduce_add_pd(v); }
};

// c_q += rows r_q (n values) times v, N at a time, the tail by a masked load
template <typename Z>
static inline void rows4(const typename Z::T* r0, const typename Z::T* r1, const typename Z::T* r2,
                         const typename Z::T* r3, const typename Z::T* v, int64_t n, typename Z::V (&c)[4]) {
  int64_t k = 0;
  for (; k + Z::N <= n; k += Z::N) {
    const typename Z::V w = Z::load(v + k);
    c[0] = Z::fma(Z::load(r0 + k), w, c[0]);
    c[1] = Z::fma(Z::load(r1 + k), w, c[1]);
    c[2] = Z::fma(Z::load(r2 + k), w, c[2]);
    c[3] = Z::fma(Z::load(r3 + k), w, c[3]);
  }
  if (k < n) {
    const auto m = static_cast<typename Z::M>((1u << (n - k)) - 1u);
    const typename Z::V w = Z::load(m, v + k);
    c[0] = Z::fma(Z::load(m, r0 + k), w, c[0]);
    c[1] = Z::fma(Z::load(m, r1 + k), w, c[1]);
    c[2] = Z::fma(Z::load(m, r2 + k), w, c[2]);
    c[3] = Z::fma(Z::load(m, r3 + k), w, c[3]);
  }
}
#endif

// Four rows of W_ih against x (n1 values) and the same four rows of W_hh against h (n2 values),
// added to s0..s3: b + W_ih x + W_hh h of one unit's four gates. With AVX-512 the two products share
// four accumulators and their sums are reduced once; otherwise two calls of dot4.
template <typename T>
static inline void dot4x2(const T* __restrict a0, const T* __restrict a1, const T* __restrict a2,
                          const T* __restrict a3, const T* __restrict x, int64_t n1, const T* __restrict b0,
                          const T* __restrict b1, const T* __restrict b2, const T* __restrict b3,
                          const T* __restrict h, int64_t n2, T& s0, T& s1, T& s2, T& s3) {
#if defined(__AVX512F__)
  using Z = std::conditional_t<std::is_same_v<T, float>, Floats16, Doubles8>;
  typename Z::V c[4] = {Z::zero(), Z::zero(), Z::zero(), Z::zero()};
  rows4<Z>(a0, a1, a2, a3, x, n1, c);
  rows4<Z>(b0, b1, b2, b3, h, n2, c);
  s0 += Z::sum(c[0]);
  s1 += Z::sum(c[1]);
  s2 += Z::sum(c[2]);
  s3 += Z::sum(c[3]);
#else
  dot4(a0, a1, a2, a3, x, n1, s0, s1, s2, s3);
  dot4(b0, b1, b2, b3, h, n2, s0, s1, s2, s3);
#endif
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
  bool due;  // sparse: examine only the units whose due time has come (open_units_due)
};

// The pre-activations of unit j's four gate rows for one sequence: b + W_ih x + W_hh h.
template <typename scalar_t>
static inline void unit_gates(const InferArgs<scalar_t>& A, int64_t j, const scalar_t* x, const scalar_t* h,
                              scalar_t* a) {
  const int64_t H = A.H, I = A.I;
  for (int q = 0; q < 4; ++q) a[q] = A.b_ih != nullptr ? A.b_ih[q * H + j] + A.b_hh[q * H + j] : scalar_t(0);
  dot4x2(A.w_ih + j * I, A.w_ih + (H + j) * I, A.w_ih + (2 * H + j) * I, A.w_ih + (3 * H + j) * I, x, I,
         A.w_hh + j * H, A.w_hh + (H + j) * H, A.w_hh + (2 * H + j) * H, A.w_hh + (3 * H + j) * H, h, H, a[0], a[1],
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
    dot4x2(wi, wi + I, wi + 2 * I, wi + 3 * I, x, I, wh, wh + H, wh + 2 * H, wh + 3 * H, h, H, g[0], g[1], g[2], g[3]);
  }
}

// max |v| over the finite values of v (0 if none): the sparse path's bound on its inputs (vector
// code: -ffast-math may not assume the values finite here).
template <typename T>
static double finite_absmax(const T* v, int64_t n) {
  int64_t i = 0;
  double top = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    const __m512 inf = _mm512_set1_ps(std::numeric_limits<float>::infinity());
    __m512 m = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16) {
      const __m512 a = _mm512_abs_ps(_mm512_loadu_ps(v + i));
      m = _mm512_mask_max_ps(m, _mm512_cmp_ps_mask(a, inf, _CMP_LT_OQ), m, a);
    }
    top = _mm512_reduce_max_ps(m);
  } else {
    const __m512d inf = _mm512_set1_pd(std::numeric_limits<double>::infinity());
    __m512d m = _mm512_setzero_pd();
    for (; i + 8 <= n; i += 8) {
      const __m512d a = _mm512_abs_pd(_mm512_loadu_pd(v + i));
      m = _mm512_mask_max_pd(m, _mm512_cmp_pd_mask(a, inf, _CMP_LT_OQ), m, a);
    }
    top = _mm512_reduce_max_pd(m);
  }
#endif
  for (; i < n; ++i) {
    const double a = std::fabs(double(v[i]));
    if (is_finite_bits(v[i]) && a > top) top = a;
  }
  return top;
}

template <typename scalar_t>
static inline bool row_finite(const scalar_t* v, int64_t n) {
  int64_t j = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<scalar_t, float>) {
    const __m512 inf = _mm512_set1_ps(std::numeric_limits<float>::infinity());
    for (; j + 16 <= n; j += 16)
      if (_mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_loadu_ps(v + j)), inf, _CMP_LT_OQ) != 0xFFFF) return false;
  } else {
    const __m512d inf = _mm512_set1_pd(std::numeric_limits<double>::infinity());
    for (; j + 8 <= n; j += 8)
      if (_mm512_cmp_pd_mask(_mm512_abs_pd(_mm512_loadu_pd(v + j)), inf, _CMP_LT_OQ) != 0xFF) return false;
  }
#endif
  bool ok = true;
  for (; j < n; ++j) ok &= is_finite_bits(v[j]);
  return ok;
}

// Sparse steps skip the closed units, which is exact while every pre-activation is a number: a
// closed unit's update is multiplied by k = 0, and 0 * finite = 0. Where a pre-activation is NaN
// the reference's 0 * NaN makes the closed units NaN too; so a step whose input row is not finite
// is computed densely (every unit, as the dense loop does), and once a sequence's state holds a
// non-finite value, all its later steps too. (Non-finite weights, and finite values large enough
// for products to overflow, where the result depends on the order of the sums, are declined
// before the loop: the caller runs the dense path.)
//
// Per step, the open units of all the thread's sequences are gathered first (their four
// pre-activations read the previous h of every unit of their sequence), then updated by one
// forward_row over all of them (vectorised, as the dense loop's; a few units per sequence would
// leave it scalar), then scattered back; every closed unit keeps h and c.
template <typename scalar_t, bool PEEP, bool PHASED>
int64_t infer_loop(const InferArgs<scalar_t>& A, const GateUnits* gu, scalar_t* HS, scalar_t* CS, scalar_t* O) {
  const int64_t T = A.T, B = A.B, I = A.I, H = A.H, BH = B * H;
  const bool sparse = PHASED && A.sparse;
  std::vector<int64_t> counts(std::max<int64_t>(1, at::get_num_threads()), 0);
  at::parallel_for(0, B, batch_grain(B), [&](int64_t b0, int64_t b1) {
    // gathered rows: at most every unit of every sequence, and a whole vector more (forward_row
    // runs on a multiple of kPad rows: its vector loop, where a few rows would be left to scalar code)
    constexpr int64_t kPad = 16;
    const int64_t nb = b1 - b0, cap = sparse ? nb * H + kPad : 0;
    std::vector<double> phi(PHASED ? H : 0);
    std::vector<scalar_t> kk(PHASED ? H : 0), G(4 * H), hp(H), cp(H);
    std::vector<scalar_t> ga(4 * cap), gh(cap), gc(cap), gk(cap), hs(cap), cs(cap), pw(PEEP ? 3 * cap : 0);
    std::vector<int64_t> open(H), cand(H), unit(cap), pend_b(nb), pend_at(nb + 1);
    std::vector<char> dense_from_now(nb, 0);  // sparse: a sequence whose state is not all finite
    // sparse with due times: the next examination of each unit, per sequence (or once, shared times)
    const int64_t rows = sparse && A.due ? (A.shared ? 1 : nb) : 0;
    std::vector<double> due(rows * H), last(rows, std::numeric_limits<double>::infinity());
    if (sparse)
      for (int64_t b = b0; b < b1; ++b)
        if (!row_finite(HS + b * H, H) || !row_finite(CS + b * H, H)) dense_from_now[b - b0] = 1;
    int64_t n_open = 0, computed = 0;
    bool full_k = !sparse;  // whether kk holds every unit's k for the current phase row
    auto gate_row = [&](double t, int64_t row) {  // k of every unit at time t (sparse: of the open ones, listed)
      if (sparse && A.due) {
        n_open = open_units_due(t, *gu, due.data() + row * H, last[row], kk.data(), open.data(), cand.data(), H);
        full_k = false;
        return;
      }
      phase_row(t, *gu, phi.data(), H);
      if (sparse) {
        n_open = open_units(phi.data(), gu->r.data(), kk.data(), open.data(), H);
        full_k = false;
      } else {
        gate_forward_row(phi.data(), gu->r.data(), A.leak, kk.data(), H);
      }
    };
    auto time_of = [&](int64_t t, int64_t b) {
      return A.times == nullptr ? double(t) : A.shared ? A.times[t] : A.times[b * T + t];
    };
    for (int64_t t = 0; t < T; ++t) {
      if (PHASED && A.shared) gate_row(time_of(t, 0), 0);
      int64_t m = 0, np = 0;  // rows gathered, sequences pending
      pend_at[0] = 0;
      for (int64_t b = b0; b < b1; ++b) {
        scalar_t *h = HS + b * H, *c = CS + b * H, *o = O + t * BH + b * H;
        if (A.len != nullptr && t >= A.len[b]) {  // past the end: state kept, output zero
          zero_row(o, H);
          continue;
        }
        if (PHASED && !A.shared) gate_row(time_of(t, b), b - b0);
        const scalar_t* xt = A.x + (t * B + b) * I;
        const bool dense_step = !sparse || dense_from_now[b - b0] || !row_finite(xt, I);
        if (!dense_step) {  // the open units' pre-activations and states, gathered
          for (int64_t u = 0; u < n_open; ++u) {
            const int64_t j = open[u], r = m + u;
            scalar_t a4[4];
            unit_gates(A, j, xt, h, a4);
            ga[r] = a4[0];
            ga[cap + r] = a4[1];
            ga[2 * cap + r] = a4[2];
            ga[3 * cap + r] = a4[3];
            gh[r] = h[j];
            gc[r] = c[j];
            gk[r] = kk[j];
            unit[r] = j;
            if (PEEP) {
              pw[r] = A.wci[j];
              pw[cap + r] = A.wcf[j];
              pw[2 * cap + r] = A.wco[j];
            }
          }
          m += n_open;
          pend_b[np++] = b;
          pend_at[np] = m;
          computed += n_open;
        } else {
          if (sparse && !full_k) {  // every unit's k for this phase row (at leak 0 the closed ones get 0)
            if (A.due) phase_row(time_of(t, b), *gu, phi.data(), H);
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
          copy_row(h, o, H);
        }
      }
      if (np == 0) continue;
      if (m > 0) {
        const int64_t mp = (m + kPad - 1) / kPad * kPad;  // the padding rows: zeros, their results unused
        for (int64_t q = 0; q < 4; ++q) std::fill(ga.begin() + q * cap + m, ga.begin() + q * cap + mp, scalar_t(0));
        std::fill(gh.begin() + m, gh.begin() + mp, scalar_t(0));
        std::fill(gc.begin() + m, gc.begin() + mp, scalar_t(0));
        std::fill(gk.begin() + m, gk.begin() + mp, scalar_t(0));
        if (PEEP)
          for (int64_t q = 0; q < 3; ++q) std::fill(pw.begin() + q * cap + m, pw.begin() + q * cap + mp, scalar_t(0));
        forward_row<scalar_t, PEEP, PHASED, false>(ga.data(), ga.data() + cap, ga.data() + 2 * cap, ga.data() + 3 * cap,
                                                   gh.data(), gc.data(), hs.data(), cs.data(), nullptr,
                                                   PEEP ? pw.data() : nullptr, PEEP ? pw.data() + cap : nullptr,
                                                   PEEP ? pw.data() + 2 * cap : nullptr, PHASED ? gk.data() : nullptr, mp);
      }
      for (int64_t q = 0; q < np; ++q) {  // the new h and c scattered back; the output row of each sequence
        const int64_t b = pend_b[q];
        scalar_t *h = HS + b * H, *c = CS + b * H;
        bool ok = true;
        for (int64_t r = pend_at[q]; r < pend_at[q + 1]; ++r) {
          h[unit[r]] = hs[r];
          c[unit[r]] = cs[r];
          ok &= is_finite_bits(hs[r]) & is_finite_bits(cs[r]);
        }
        if (!ok) dense_from_now[b - b0] = 1;
        copy_row(h, O + t * BH + b * H, H);
      }
    }
    counts[at::get_thread_num()] += computed;
  });
  int64_t total = 0;
  for (int64_t v : counts) total += v;
  return total;
}

std::tuple<std::vector<Tensor>, int64_t, int64_t> infer_forward(
    const Tensor& x, const OptTensor& times_opt, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& b_ih_opt, const OptTensor& b_hh_opt, const OptTensor& w_ci_opt,
    const OptTensor& w_cf_opt, const OptTensor& w_co_opt, const OptTensor& tau_opt, const OptTensor& s_opt,
    const OptTensor& r_on_opt, double leak, const OptTensor& lengths_opt, bool sparse, at::ArrayRef<double> bounds) {
  const Tensor times = or_empty(times_opt, x.options().dtype(at::kDouble));
  const Tensor b_ih = or_empty(b_ih_opt, x.options());
  const Tensor b_hh = or_empty(b_hh_opt, x.options());
  const Tensor w_ci = or_empty(w_ci_opt, x.options());
  const Tensor w_cf = or_empty(w_cf_opt, x.options());
  const Tensor w_co = or_empty(w_co_opt, x.options());
  const Tensor tau = or_empty(tau_opt, x.options());
  const Tensor s = or_empty(s_opt, x.options());
  const Tensor r_on = or_empty(r_on_opt, x.options());
  const Tensor lengths = or_empty(lengths_opt, x.options().dtype(at::kLong));
  TORCH_CHECK(bounds.size() == 3, "bounds must hold 3 values");
  TORCH_CHECK(x.dim() == 3, "x must be (T, B, I)");
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(1);
  TORCH_CHECK(w_ih.size(0) == 4 * H && w_hh.size(0) == 4 * H && w_ih.size(1) == I, "weights do not fit");
  TORCH_CHECK(h0.numel() == B * H && c0.numel() == B * H, "h0 and c0 must hold B * H values");
  const bool phased = has_values(tau), peephole = has_values(w_ci);
  std::vector<Tensor> none;
  if (x.scalar_type() != w_ih.scalar_type() || h0.scalar_type() != w_ih.scalar_type() ||
      c0.scalar_type() != w_ih.scalar_type())
    return {none, 4, 0};
  Tensor t64;
  double top_t = double(T);  // max |timestamp| (the step index without times)
  if (has_values(times)) {  // checked for every layer (as the reference does); used by the time gate
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
    top_t = top;
  }
  const bool use_sparse = sparse && phased && leak == 0.0;
  const Tensor xc = x.contiguous();
  if (use_sparse) {
    // status 5: weights not finite, or values so large that a sum of products could overflow (a
    // bound of every pre-activation: max|W_ih| max|x| I + max|W_hh| max(1, max|h_0|) H + max|b|;
    // an update keeps |h| within max(1, max|h_0|)). NaN or inf inputs and states are handled inside.
    // bounds: max|W_ih|, max|W_hh|, max|b_ih| + max|b_hh| (inf where a value is not finite), the
    // caller's where it keeps them (a stream's one-step calls), else (negative) computed here
    const double limit = x.scalar_type() == at::kFloat ? 1.0e36 : 1.0e300;
    double bd[3] = {bounds[0], bounds[1], bounds[2]};
    double xmax = 0, hmax = 1;
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "infer_bounds", [&] {
      if (bd[0] < 0) {
        auto of = [](const Tensor& w) -> double {
          if (!has_values(w)) return 0.0;
          const Tensor c = w.contiguous();
          const scalar_t* p = c.data_ptr<scalar_t>();
          return row_finite(p, c.numel()) ? finite_absmax(p, c.numel())
                                           : std::numeric_limits<double>::infinity();
        };
        bd[0] = of(w_ih);
        bd[1] = of(w_hh);
        bd[2] = of(b_ih) + of(b_hh);
      }
      const Tensor hc = h0.contiguous();
      xmax = finite_absmax(xc.data_ptr<scalar_t>(), xc.numel());
      hmax = std::max(1.0, finite_absmax(hc.data_ptr<scalar_t>(), hc.numel()));
    });
    const bool ok = is_finite_bits(bd[0]) && is_finite_bits(bd[1]) && is_finite_bits(bd[2]);
    const double bound = bd[0] * xmax * double(I) + bd[1] * hmax * double(H) + bd[2];
    if (!ok || !is_finite_bits(bound) || !(bound < limit)) return {none, 5, 0};
  }
  auto opts = x.options();
  Tensor out = at::empty({T, B, H}, opts);
  Tensor hn = h0.reshape({1, B, H}).clone(at::MemoryFormat::Contiguous);
  Tensor cn = c0.reshape({1, B, H}).clone(at::MemoryFormat::Contiguous);
  const Tensor wi = w_ih.contiguous(), w = w_hh.contiguous();
  const bool bias = has_values(b_ih);
  const Tensor bi = bias ? b_ih.contiguous() : b_ih, bh = bias ? b_hh.contiguous() : b_hh;
  const Tensor pi = peephole ? w_ci.contiguous() : w_ci, pf = peephole ? w_cf.contiguous() : w_cf,
               po = peephole ? w_co.contiguous() : w_co;
  const int64_t* len = has_values(lengths) ? lengths.data_ptr<int64_t>() : nullptr;
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
                          T, B, I, H, leak, use_sparse, use_sparse && due_usable(top_t, *gu, H)};
    scalar_t *HS = hn.data_ptr<scalar_t>(), *CS = cn.data_ptr<scalar_t>(), *O = out.data_ptr<scalar_t>();
    if (phased && peephole) computed = infer_loop<scalar_t, true, true>(A, gu.get(), HS, CS, O);
    else if (phased) computed = infer_loop<scalar_t, false, true>(A, gu.get(), HS, CS, O);
    else if (peephole) computed = infer_loop<scalar_t, true, false>(A, nullptr, HS, CS, O);
    else computed = infer_loop<scalar_t, false, false>(A, nullptr, HS, CS, O);
  });
  if (status != 0) return {none, status, 0};
  return {{out, hn, cn}, 0, computed};
}

}  // namespace phasedlstm
