// The Phased LSTM's time gate, row by row: shared by the gate of all steps (time_gate.cpp) and
// inference (infer.cpp), which computes it inside its loop.
#pragma once

#include "common.h"

namespace phasedlstm {

// ---------------------------------------------------------------------------------------------
// The time gate of all steps (before the loop): k = piecewise(phi), phi = ((t - s) mod tau) / tau
// ---------------------------------------------------------------------------------------------
// Phase arithmetic in float64 and without -ffast-math's reassociation, so timestamps as large
// as 1e9 keep their phase. Like phasedlstm.cells.time_gate: tau_e = max(|tau|, 1e-6),
// r = clamp(|r_on|, 1e-6, 1), a true modulo (the result is in [0, tau_e) also for t < s).

// (This header's functions only: files that include it compile the rest under their own options.)
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
// integer gives n off by one, which one correction by tau_e fixes (again exactly). The quotient is
// therefore taken as u * (1 / tau_e), a multiplication instead of a division (its few ulps of error
// move n by at most one, which the correction absorbs): the remainder, and phi, are the same. This holds
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
                                  const double* __restrict inv_te, double* __restrict phi, int64_t H) {
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
    const __m256d q = _mm256_mul_pd(u, _mm256_loadu_pd(inv_te + j));
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
    const double u = t - s[j], q = u * inv_te[j];
    ok &= std::fabs(q) < kFastQuotient;
    double m = std::fma(-te[j], std::floor(q), u);
    m = m < 0 ? m + te[j] : (m >= te[j] ? m - te[j] : m);
    phi[j] = m / te[j];
  }
  return ok;
}

static inline void phase_row(double t, const GateUnits& U, double* phi, int64_t H) {
  const double *s = U.s.data(), *te = U.te.data();
  if (!phase_row_fast(t, s, te, U.inv_te.data(), phi, H))
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

// Sparse inference of a sequence whose timestamps do not decrease: the units examined at a step are
// those whose `due` time has come. A closed unit (phi >= r) stays closed until its phase wraps, so its
// next examination is due at t + (1 - phi) tau_e less a margin (1e-12 of |t| + |s| + tau_e, far
// above the rounding of t - s and of that sum), which is never later than the first step at which
// the phase computed as phase_row's would be below r again; the open ones are examined at every step.
// Each examined unit's phase is phase_row_fast's scalar formula, so the open units and their k
// are those of open_units(phase_row(t)) to the bit. That holds where no unit's quotient reaches
// 2^50 (phase_row would then take phase_exact for the whole row): due_usable says so for a call.
// `last` is the previous step's time: a step earlier than it (or the first) examines every unit.
static inline bool due_usable(double max_abs_t, const GateUnits& U, int64_t H) {
  double smax = 0, temin = std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < H; ++j) {
    smax = std::max(smax, std::fabs(U.s[j]));
    temin = std::min(temin, U.te[j]);
  }
  return max_abs_t + smax < 0.25 * kFastQuotient * temin;
}

template <typename scalar_t>
static inline int64_t open_units_due(double t, const GateUnits& U, double* __restrict due, double& last,
                                     scalar_t* __restrict k, int64_t* __restrict open, int64_t* __restrict cand,
                                     int64_t H) {
  const double *s = U.s.data(), *te = U.te.data(), *r = U.r.data();
  if (!(t >= last))
    for (int64_t j = 0; j < H; ++j) due[j] = -std::numeric_limits<double>::infinity();
  last = t;
  // the units due at t, listed in cand (ascending)
  int64_t nc = 0, j = 0;
#if defined(__AVX512F__)
  {  // 8 at a time, their indices compress-stored
    const __m512d t8 = _mm512_set1_pd(t);
    __m512i idx = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i step = _mm512_set1_epi64(8);
    for (; j + 8 <= H; j += 8) {
      const __mmask8 m = _mm512_cmp_pd_mask(_mm512_loadu_pd(due + j), t8, _CMP_LE_OQ);
      _mm512_mask_compressstoreu_epi64(cand + nc, m, idx);
      nc += __builtin_popcount(static_cast<unsigned>(m));
      idx = _mm512_add_epi64(idx, step);
    }
  }
#endif
#if defined(__AVX2__)
  const __m256d tt = _mm256_set1_pd(t);
  for (; j + 4 <= H; j += 4) {
    int m = _mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(due + j), tt, _CMP_LE_OQ));
    while (m) {
      cand[nc++] = j + __builtin_ctz(m);
      m &= m - 1;
    }
  }
#endif
  for (; j < H; ++j)
    if (due[j] <= t) cand[nc++] = j;
  int64_t n = 0;
  auto settle = [&](int64_t j, double p, scalar_t v, double next) {  // one examined unit
    if (p < r[j]) {
      if (v != scalar_t(0)) {
        k[j] = v;
        open[n++] = j;
      }
    } else {
      due[j] = next;
    }
  };
  int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  // 4 units at a time, with phase_row_fast's and gate_forward_row's vector operations (each IEEE-exact,
  // so the scalar loop's bits): phase, k, and the time at which a closed unit is due again
  const __m256d zero = _mm256_setzero_pd(), two = _mm256_set1_pd(2.0), half = _mm256_set1_pd(0.5),
                one = _mm256_set1_pd(1.0), sign = _mm256_set1_pd(-0.0), eps = _mm256_set1_pd(1e-12),
                at = _mm256_set1_pd(std::fabs(t));
  for (; i + 4 <= nc; i += 4) {
    const __m256i vi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cand + i));
    const __m256d sv = _mm256_i64gather_pd(s, vi, 8), tev = _mm256_i64gather_pd(te, vi, 8),
                  rv = _mm256_i64gather_pd(r, vi, 8);
    const __m256d u = _mm256_sub_pd(tt, sv);
    // (the quotient by division here: a fourth gather, of 1 / tau_e, costs more than the division
    // saves; the corrected remainder, and so the phase, are phase_row_fast's either way)
    __m256d m = _mm256_fnmadd_pd(tev, _mm256_floor_pd(_mm256_div_pd(u, tev)), u);
    const __m256d neg = _mm256_cmp_pd(m, zero, _CMP_LT_OQ);
    const __m256d over = _mm256_andnot_pd(neg, _mm256_cmp_pd(m, tev, _CMP_GE_OQ));
    m = _mm256_blendv_pd(m, _mm256_add_pd(m, tev), neg);
    m = _mm256_blendv_pd(m, _mm256_sub_pd(m, tev), over);
    const __m256d p = _mm256_div_pd(m, tev);
    const __m256d a = _mm256_div_pd(_mm256_mul_pd(two, p), rv);
    const __m256d v = _mm256_blendv_pd(_mm256_sub_pd(two, a), a, _mm256_cmp_pd(p, _mm256_mul_pd(rv, half), _CMP_LT_OQ));
    const __m256d margin = _mm256_mul_pd(eps, _mm256_add_pd(_mm256_add_pd(at, _mm256_andnot_pd(sign, sv)), tev));
    const __m256d next = _mm256_sub_pd(_mm256_fmadd_pd(_mm256_sub_pd(one, p), tev, tt), margin);
    alignas(32) double pa[4], va[4], na[4];
    _mm256_store_pd(pa, p);
    _mm256_store_pd(va, v);
    _mm256_store_pd(na, next);
    for (int q = 0; q < 4; ++q) settle(cand[i + q], pa[q], static_cast<scalar_t>(va[q]), na[q]);
  }
#endif
  for (; i < nc; ++i) {
    const int64_t j = cand[i];
    const double u = t - s[j], q = u / te[j];
    double m = std::fma(-te[j], std::floor(q), u);
    m = m < 0 ? m + te[j] : (m >= te[j] ? m - te[j] : m);
    const double p = m / te[j];
    const scalar_t v = static_cast<scalar_t>(p < r[j] / 2 ? 2 * p / r[j] : 2 - 2 * p / r[j]);
    settle(j, p, v, t + (1.0 - p) * te[j] - 1e-12 * (std::fabs(t) + std::fabs(s[j]) + te[j]));
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
    // a closed unit adds exactly 0 to d r_on, whatever dk holds (NaN too), as the reference's select does
    _mm256_storeu_pd(a_r + j, _mm256_add_pd(_mm256_loadu_pd(a_r + j),
                                            _mm256_and_pd(on, _mm256_mul_pd(_mm256_mul_pd(g, dr),
                                                                            _mm256_loadu_pd(drq + j)))));
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
    if (on) a_r[j] = a_r[j] + (g * dr) * drq[j];
    d_t += d;
  }
  return d_t;
}

#pragma GCC pop_options

}  // namespace phasedlstm
