// The layer-normalised LSTM over all steps of one direction: forward, inference and backward.
#include "schedule.h"
#include "ops.h"

namespace phasedlstm {

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
    const scalar_t i = sigm(ai[j]), f = sigm(af[j]), g = tanh_exact(ag[j]), o = sigm(ao[j]);
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
  for (int64_t j = 0; j < H; ++j) h[j] = o[j] * tanh_exact(g_c[j] * zc[j] + b_c[j]);
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
    auto z = [&](const Tensor& t, int64_t n) { return has_values(t) ? t.contiguous() : at::zeros({n}, g_ih_.options()); };
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
// a row, so the element-wise pass after it is shared by rows (with the micro-kernel's packs the
// loops run both in one parallel region, a barrier after each; otherwise this is a fork/join).
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

// The unit split's steps t0 .. t1-1 with the micro-kernel's packs, in one parallel region: per step
// the recurrent terms z(t) (row stride ldz) = h_{t-1} W_hh^T by units (hprev(t): all rows), a
// barrier, the rows by sequences, a barrier (the next products read every row's h_t).
// make_rows() gives each thread its callable rows(t, b0, b1), with its own scratch.
template <typename HP, typename ZP, typename MakeRows>
void ln_units_steps(const UnitPacks& up, int64_t B, int64_t H, int64_t t0, int64_t t1, HP hprev, ZP z, int64_t ldz,
                    MakeRows make_rows) {
  const int64_t blk = unit_block(H), nb = (H + blk - 1) / blk;
  in_team(nb, [&](int64_t tid, int64_t nth, auto barrier) {
    const int64_t q0 = tid * nb / nth, q1 = (tid + 1) * nb / nth, b0 = tid * B / nth, b1 = (tid + 1) * B / nth;
    auto rows = make_rows();
    for (int64_t t = t0; t < t1; ++t) {
      const bool back = backwards(t);
      for (int64_t j = q0; j < q1; ++j)
        for (int64_t i = 0; i < 4; ++i) {
          const int64_t q = in_step_order(j, q0, q1, back), gate = in_step_order(i, 0, 4, back);
          up.acc(4 * q + gate, B, hprev(t), H, z(t) + gate * H + q * blk, ldz, /*set=*/true, back);
        }
      barrier();  // every unit's recurrent terms, before the rows normalise them
      rows(t, b0, b1);
      barrier();  // every row's h_t, before the next products read it
    }
  });
}

template <typename scalar_t>
void ln_forward_loop(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh, const LnParams<scalar_t>& P,
                     const int64_t* len, Tensor& rih, Tensor& zhh, Tensor& rhh, Tensor& zc, Tensor& rc,
                     Tensor& hs, Tensor& cs, Tensor& out, bool own_out) {
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = w_hh.size(1), BH = B * H;
  const bool units = split_units(B, H);
  const RecurrentProduct rec(w_hh, /*transpose=*/true, /*pack=*/!units);
  // zhh (T, B, 8H): per row the recurrent term h_{t-1} W_hh^T, then the input term x_t W_ih^T, both
  // normalised in place below and kept for the backward. The input terms: with the batch split and
  // the micro-kernel each thread's per step (still in cache when normalised) where I is small
  // (inputs_per_step); otherwise those of all steps in one (multi-threaded) GEMM here.
  const bool per_step_in = !units && inputs_per_step(I, H) && RecurrentProduct::packable(w_ih, /*transpose=*/true);
  const RecurrentProduct rin(w_ih, /*transpose=*/true, /*pack=*/per_step_in);
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
  const scalar_t* XP = x.data_ptr<scalar_t>();
  const Tensor W = units ? w_hh.detach() : Tensor();
  const UnitPacks up(units ? w_hh : Tensor(), units ? T : 0);
  // rows b0..b1 of step t (their z already computed); with the batch split one region runs all steps
  auto rows = [&](int64_t t, int64_t b0, int64_t b1, std::vector<scalar_t>& act) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r = b * H, p = t * BH + r, n = (t + 1) * BH + r, g8 = 8 * p;
      if (len != nullptr && t >= len[b]) {  // past the end: state unchanged, output zero
        ended_row(HS + p, CS + p, HS + n, CS + n, O + p, H);
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
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (up.on()) {
        ln_units_steps(
            up, B, H, 0, T, [&](int64_t t) { return HS + t * BH; }, [&](int64_t t) { return Z + t * B * 8 * H; },
            8 * H, [&] {
              return [&, act = std::vector<scalar_t>(4 * H)](int64_t t, int64_t b0, int64_t b1) mutable {
                rows(t, b0, b1, act);
              };
            });
        return;
      }
    }
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
      scalar_t* zr = Z + (t * B + b0) * 8 * H;  // this thread's zhh rows of step t
      // the input product and the recurrent one, the latter first on a backwards step
      const bool back = backwards(t);
      auto input = [&] { if (per_step_in) rin.set_rows<scalar_t>(Bt, XP + (t * B + b0) * I, I, zr + 4 * H, 8 * H, back); };
      if (!back) input();
      rec.set_rows<scalar_t>(Bt, HS + (t * B + b0) * H, H, zr, 8 * H, back);
      if (back) input();
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
  const bool units = split_units(B, H, /*packed_infer=*/RecurrentProduct::packable(w_hh, /*transpose=*/true));
  const RecurrentProduct rec(w_hh, /*transpose=*/true, /*pack=*/!units);
  // With the batch split and the micro-kernel, each thread also multiplies its rows' inputs per
  // step (x_t W_ih^T, K = I), into a buffer still in cache when the row is normalised, instead of
  // one GEMM per chunk of steps whose result is read back from memory; not where I is large
  // (inputs_per_step).
  const bool per_step_in = !units && inputs_per_step(I, H) && RecurrentProduct::packable(w_ih, /*transpose=*/true);
  const RecurrentProduct rin(w_ih, /*transpose=*/true, /*pack=*/per_step_in);
  const Tensor W = units ? w_hh.detach() : Tensor();
  const UnitPacks up(units ? w_hh : Tensor(), units ? T : 0);
  scalar_t* HS = hbuf.data_ptr<scalar_t>();
  scalar_t* CS = cbuf.data_ptr<scalar_t>();
  scalar_t* O = out.data_ptr<scalar_t>();
  const scalar_t* XP = x.data_ptr<scalar_t>();
  const int64_t chunk = per_step_in ? T : infer_chunk(T, BH);
  Tensor zi_all = per_step_in ? Tensor() : pooled_empty({chunk, B, 4 * H}, x.options());
  Tensor z_all = units ? at::empty({B, 4 * H}, x.options()) : Tensor();  // (the unit split's recurrent terms)
  // rows b0..b1 of step t; Z: their recurrent terms, ZI their input terms, row b at 4 (b - zb) H of each
  auto rows = [&](int64_t t, int64_t b0, int64_t b1, scalar_t* Z, scalar_t* ZI, int64_t zb, std::vector<scalar_t>& act,
                  std::vector<scalar_t>& zc) {
    const int64_t sp = t % 2, sn = (t + 1) % 2;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r = b * H, o4 = 4 * (b - zb) * H;
      scalar_t *hp = HS + sp * BH + r, *cp = CS + sp * BH + r, *hn = HS + sn * BH + r, *cn = CS + sn * BH + r;
      if (len != nullptr && t >= len[b]) {
        ended_row(hp, cp, hn, cn, O + t * BH + r, H);
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
      if constexpr (std::is_same_v<scalar_t, float>) {
        if (up.on()) {  // (z_all: the one step's recurrent terms, rewritten every step)
          float* ZA = z_all.data_ptr<float>();
          ln_units_steps(
              up, B, H, t0, t0 + n, [&](int64_t t) { return HS + (t % 2) * BH; }, [&](int64_t) { return ZA; }, 4 * H,
              [&] {
                return [&, act = std::vector<scalar_t>(4 * H), zc = std::vector<scalar_t>(H)](
                           int64_t t, int64_t b0, int64_t b1) mutable { rows(t, b0, b1, ZA, zi_of(t), 0, act, zc); };
              });
          continue;
        }
      }
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
        const bool back = backwards(t);  // (as in the training loop)
        auto input = [&] {
          if (per_step_in) rin.set_rows<scalar_t>(Bt, XP + (t * B + b0) * I, I, zi_rows.data_ptr<scalar_t>(), 4 * H, back);
        };
        if (!back) input();
        rec.set_rows<scalar_t>(Bt, HS + ((t % 2) * B + b0) * H, H, z_rows.data_ptr<scalar_t>(), 4 * H, back);
        if (back) input();
        rows(t, b0, b1, z_rows.data_ptr<scalar_t>(),
             per_step_in ? zi_rows.data_ptr<scalar_t>() : zi_of(t) + b0 * 4 * H, b0, act, zc);
      }
    });
  }
}

std::vector<Tensor> ln_forward(const Tensor& x, const Tensor& w_ih, const Tensor& g_ih, const OptTensor& b_ih_opt,
                               const Tensor& w_hh, const Tensor& h0, const Tensor& c0, const Tensor& g_hh,
                               const OptTensor& b_hh_opt, const Tensor& g_c, const OptTensor& b_c_opt,
                               const OptTensor& lengths_opt, bool save) {
  const Tensor b_ih = or_empty(b_ih_opt, x.options());
  const Tensor b_hh = or_empty(b_hh_opt, x.options());
  const Tensor b_c = or_empty(b_c_opt, x.options());
  const Tensor lengths = or_empty(lengths_opt, x.options().dtype(at::kLong));
  TORCH_CHECK(x.dim() == 3, "x must be (T, B, I)");
  const int64_t T = x.size(0), B = x.size(1), H = w_hh.size(1);
  auto opts = x.options();
  if (!save) {
    const Tensor xc = x.contiguous(), wi = w_ih.contiguous(), w = w_hh.contiguous();
    const LnTensors ln(g_ih, b_ih, g_hh, b_hh, g_c, b_c, H);
    const int64_t* len = has_values(lengths) ? lengths.data_ptr<int64_t>() : nullptr;
    Tensor hbuf = at::empty({2, B, H}, opts), cbuf = at::empty({2, B, H}, opts), out = at::empty({T, B, H}, opts);
    hbuf[0].copy_(h0);
    cbuf[0].copy_(c0);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ln_infer", [&] {
      ln_infer_loop<scalar_t>(xc, wi, w, ln.params<scalar_t>(), len, hbuf, cbuf, out);
    });
    return {out, hbuf[T % 2].clone(), cbuf[T % 2].clone()};
  }
  // without lengths the output is the saved states h_1..h_T themselves (then not on a pooled block)
  const bool own_out = has_values(lengths);
  Tensor zhh = pooled_empty({T, B, 8 * H}, opts);  // the recurrent and the input term of every row
  Tensor rih = at::empty({T, B}, opts), rhh = at::empty({T, B}, opts), zc = pooled_empty({T, B, H}, opts),
         rc = at::empty({T, B}, opts);
  Tensor hs = own_out ? pooled_empty({T + 1, B, H}, opts) : at::empty({T + 1, B, H}, opts),
         cs = pooled_empty({T + 1, B, H}, opts);
  Tensor out = own_out ? at::empty({T, B, H}, opts) : hs.narrow(0, 1, T);
  hs[0].copy_(h0);
  cs[0].copy_(c0);
  const Tensor xc = x.contiguous(), wi = w_ih.contiguous(), w = w_hh.contiguous();
  const LnTensors ln(g_ih, b_ih, g_hh, b_hh, g_c, b_c, H);
  const int64_t* len = has_values(lengths) ? lengths.data_ptr<int64_t>() : nullptr;
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
    const scalar_t ty = tanh_exact(g_c[j] * zc[j] + b_c[j]);
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
                      Tensor& dw_hh, Tensor& dw_ih, Tensor& parts) {
  const int64_t T = zhh.size(0), B = zhh.size(1), I = x.size(2), H = w_hh.size(1), BH = B * H;
  const bool units = split_units(B, H);
  const RecurrentProduct rec(w_hh, /*transpose=*/false, /*pack=*/!units), rin(w_ih, /*transpose=*/false, /*pack=*/!units);
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
  // dx and the weight gradients from every step's term gradients (dz: recurrent, dxw: input; (T, B, 4H)
  // each), one product each over the valid steps (valid_step_products), written straight into the
  // gradients' layouts: dW_hh = dZ^T h_{t-1}, dW_ih = dXW^T x (as lstm_backward.cpp).
  auto grads_over_steps = [&](const Tensor& dzall, const Tensor& dxall) {
    Tensor dz = dzall.view({T * B, 4 * H}), dxw = dxall.view({T * B, 4 * H});
    Tensor h = hs.narrow(0, 0, T).reshape({T * B, H}), xr = x.reshape({T * B, I});
    valid_step_products(len, T, B, w_ih.detach(), dx.view({T * B, I}), dxw, {&dz, &h, &xr});
    at::mm_out(dw_hh, dz.t(), h);
    at::mm_out(dw_ih, dxw.t(), xr);
  };
  if (units) {
    // Few sequences and a large W_hh (split_units): per step the rows by sequences, then
    // dh_{t-1} += dZ_t W_hh by columns of dh (each thread its units' columns of W_hh: no thread
    // streams all of it), two parallel regions per step; the gradients of all steps' terms are
    // kept, and dx and the weight gradients are one GEMM each at the end (grads_over_steps).
    Tensor dzall = pooled_empty({T, B, 4 * H}, zhh.options()), dxall = pooled_empty({T, B, 4 * H}, zhh.options());
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
    grads_over_steps(dzall, dxall);
  } else if (defer_weight_grads(B, H)) {
    // Few sequences per thread (as lstm_backward.cpp): per step the rows and dh_{t-1} += dZ W_hh
    // only; the gradients of all steps' terms are kept, and dx and the weight gradients are one
    // product each over the valid steps at the end.
    Tensor dzall = pooled_empty({T, B, 4 * H}, zhh.options()), dxall = pooled_empty({T, B, 4 * H}, zhh.options());
    scalar_t* DZA = dzall.data_ptr<scalar_t>();
    scalar_t* DXA = dxall.data_ptr<scalar_t>();
    at::parallel_for(0, B, batch_grain(B), [&](int64_t b0, int64_t b1) {
      scalar_t* acc = parts[at::get_thread_num()].data_ptr<scalar_t>();
      Scratch w(H);
      for (int64_t t = T - 1; t >= 0; --t) {
        for (int64_t b = b0; b < b1; ++b) row(t, b, DXA + (t * B + b) * 4 * H, DZA + (t * B + b) * 4 * H, acc, w);
        rec.acc_rows<scalar_t>(b1 - b0, DZA + (t * B + b0) * 4 * H, DHB + ((t % 2) * B + b0) * H);
      }
    });
    grads_over_steps(dzall, dxall);
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
      products(t, DX, DZ, DHB + ((t % 2) * B + b0) * H, dx.data_ptr<scalar_t>() + (t * B + b0) * I, dwhh, dwih);
    }
  });
  dh.copy_(dhb[0]);
  dc.copy_(dcb[0]);
}

std::vector<Tensor> ln_backward(const OptTensor& grad_out_opt, const OptTensor& grad_hn_opt,
                                const OptTensor& grad_cn_opt, const Tensor& x, const Tensor& w_ih,
                                const Tensor& g_ih, const OptTensor& b_ih_opt, const Tensor& w_hh,
                                const Tensor& g_hh, const OptTensor& b_hh_opt, const Tensor& g_c,
                                const OptTensor& b_c_opt, const OptTensor& lengths_opt, const Tensor& rih,
                                const Tensor& zhh, const Tensor& rhh, const Tensor& zc, const Tensor& rc,
                                const Tensor& hs, const Tensor& cs) {
  const FlushDenormals flush;  // (a gradient shrinking over many steps: common.h)
  const Tensor grad_out = or_empty(grad_out_opt, x.options());
  const Tensor grad_hn = or_empty(grad_hn_opt, x.options());
  const Tensor grad_cn = or_empty(grad_cn_opt, x.options());
  const Tensor b_ih = or_empty(b_ih_opt, x.options());
  const Tensor b_hh = or_empty(b_hh_opt, x.options());
  const Tensor b_c = or_empty(b_c_opt, x.options());
  const Tensor lengths = or_empty(lengths_opt, x.options().dtype(at::kLong));
  const int64_t T = zhh.size(0), B = zhh.size(1), I = x.size(2), H = w_hh.size(1);
  const int64_t nt = at::get_num_threads();
  auto opts = zhh.options();
  Tensor dh = has_values(grad_hn) ? grad_hn.contiguous().clone() : at::zeros({B, H}, opts);
  Tensor dc = has_values(grad_cn) ? grad_cn.contiguous().clone() : at::zeros({B, H}, opts);
  Tensor dx = at::empty({T, B, I}, opts);
  // the weight gradients: formed once after the loop where ln_backward_loop keeps every step's term
  // gradients (the unit split, few sequences per thread), else per-thread partials (H, 4H) added up
  const bool at_end = weight_grads_at_end(B, H);
  const int64_t np = at_end ? 0 : nt;
  Tensor dwhh_t = at::zeros({np, H, 4 * H}, opts), dwih_t = at::zeros({np, I, 4 * H}, opts);
  Tensor dw_hh = at::empty({at_end ? 4 * H : 0, H}, opts), dw_ih = at::empty({at_end ? 4 * H : 0, I}, opts);
  Tensor parts = at::zeros({nt, 18 * H}, opts);
  const Tensor go = has_values(grad_out) ? grad_out.contiguous() : pooled_zeros({T, B, H}, opts);
  const Tensor xc = x.contiguous(), wi = w_ih.contiguous(), w = w_hh.contiguous();
  const LnTensors ln(g_ih, b_ih, g_hh, b_hh, g_c, b_c, H);
  const int64_t* len = has_values(lengths) ? lengths.data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(zhh.scalar_type(), "ln_backward", [&] {
    ln_backward_loop<scalar_t>(go, xc, wi, w, ln.params<scalar_t>(), len, rih, zhh, rhh, zc, rc, hs, cs, dh, dc,
                               dx, dwhh_t, dwih_t, dw_hh, dw_ih, parts);
  });
  if (!at_end) {
    dw_hh = dwhh_t.sum(0).t().contiguous();
    dw_ih = dwih_t.sum(0).t().contiguous();
  }
  Tensor sums = parts.sum(0);
  // dx, dW_ih, d g_ih, d b_ih, dW_hh, dh0, dc0, d g_hh, d b_hh, d g_c, d b_c
  return {dx, dw_ih, sums.narrow(0, 8 * H, 4 * H), sums.narrow(0, 12 * H, 4 * H), dw_hh, dh, dc,
          sums.narrow(0, 0, 4 * H), sums.narrow(0, 4 * H, 4 * H), sums.narrow(0, 16 * H, H), sums.narrow(0, 17 * H, H)};
}

}  // namespace phasedlstm
