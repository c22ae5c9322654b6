// The batch-normalised LSTM (Cooijmans et al., 2016) over all steps of one direction: forward and
// backward. The equations are phasedlstm/cells.py's batchnorm_step:
//
//   a   = g_ih * BN(x_t W_ih^T) + b_ih + g_hh * BN(h_{t-1} W_hh^T) + b_hh
//   c_t = sigmoid(a_f) c_{t-1} + sigmoid(a_i) tanh(a_g)
//   h_t = sigmoid(a_o) tanh(g_c * BN(c_t) + b_c)
//
// where BN normalises each feature over the batch: with the statistics of the sequences still
// running at step t (training: the mean and biased variance of their rows), or with given
// population statistics (evaluation). The input products x_t W_ih^T of all steps (wx) are one
// GEMM before the loop, as their gradient's products are after it (phasedlstm/paths/batchnorm.py);
// their normalisation is inside the loop, where each step's rows are in cache.
//
// Every normalisation is per feature, so a step's work is shared among threads by units (the unit
// blocks of schedule.h): a thread owns units [u0, u0 + w) of every gate, multiplies h_{t-1} by their
// rows of W_hh and computes their statistics, gates, cell and output for all rows, in one parallel
// region per step; the backward's dh_{t-1} = dZ_t W_hh is by columns of dh, a second region per
// step. For float32 with the micro-kernel the products use W_hh packed once per call.
//
// Layout: time-major. wx (T, B, 4H), w_hh (4H, H), g_ih, b_ih, g_hh, b_hh (4H,) (the shifts may be
// empty), g_c, b_c (H,) (b_c may be empty), h0, c0 (B, H), lengths (B,) int64 or empty (steps
// t >= lengths[b] keep the state of sequence b, output zero and take no part in the statistics),
// population (T, 18H) = [mean_ih | var_ih | mean_hh | var_hh (4H each) | mean_c | var_c (H each)]
// per step, or empty for the batch's statistics (returned in the same layout, variances biased).
#include "schedule.h"
#include "ops.h"

namespace phasedlstm {

namespace {

inline bool running(const int64_t* len, int64_t t, int64_t b) { return len == nullptr || t < len[b]; }

// The loops over one thread's block of w features, on restrict pointers so that they vectorise
// (activations included: -ffast-math lets GCC call the vector exp and tanh).

// s += x
template <typename A, typename T>
inline void add_to(A* __restrict s, const T* __restrict x, int64_t w) {
  for (int64_t j = 0; j < w; ++j) s[j] += A(x[j]);
}

// s += (x - m)^2
template <typename A, typename T>
inline void add_sq_dev(A* __restrict s, const T* __restrict x, const A* __restrict m, int64_t w) {
  for (int64_t j = 0; j < w; ++j) {
    const A d = A(x[j]) - m[j];
    s[j] += d * d;
  }
}

// xn = (wx - mi) ri, z = (z - mh) rh in place; a = gi xn + bi + gh z + bh
template <typename T>
inline void bn_pre(const T* __restrict wx, T* __restrict xn, T* __restrict z, T* __restrict a, const T* __restrict mi,
                   const T* __restrict ri, const T* __restrict mh, const T* __restrict rh, const T* __restrict gi,
                   const T* __restrict bi, const T* __restrict gh, const T* __restrict bh, int64_t w) {
  for (int64_t j = 0; j < w; ++j) {
    xn[j] = (wx[j] - mi[j]) * ri[j];
    z[j] = (z[j] - mh[j]) * rh[j];
    a[j] = gi[j] * xn[j] + bi[j] + gh[j] * z[j] + bh[j];
  }
}

// the gate activations in place of their pre-activations, and c = f c_prev + i g
template <typename T>
inline void bn_cell(T* __restrict ki, T* __restrict kf, T* __restrict kg, T* __restrict ko, const T* __restrict cp,
                    T* __restrict c, int64_t w) {
  for (int64_t j = 0; j < w; ++j) {
    const T i = sigm(ki[j]), f = sigm(kf[j]), g = tanh_exact(kg[j]), o = sigm(ko[j]);
    ki[j] = i;
    kf[j] = f;
    kg[j] = g;
    ko[j] = o;
    c[j] = f * cp[j] + i * g;
  }
}

// cn = (c - mc) rc, ty = tanh(gc cn + bc), h = o ty (also into the output)
template <typename T>
inline void bn_out(const T* __restrict c, const T* __restrict mc, const T* __restrict rc, const T* __restrict gc,
                   const T* __restrict bc, const T* __restrict o, T* __restrict cn, T* __restrict ty, T* __restrict h,
                   T* __restrict out, int64_t w) {
  for (int64_t j = 0; j < w; ++j) {
    cn[j] = (c[j] - mc[j]) * rc[j];
    ty[j] = tanh_exact(gc[j] * cn[j] + bc[j]);
    h[j] = o[j] * ty[j];
    out[j] = h[j];
  }
}

// From dh_t: the output gate's pre-activation gradient, the gradient of the normalised cell state
// (dcn) and its column sums (s1: of dcn, s2: of dcn cn), and the sums of g_c's and b_c's gradients.
template <typename T>
inline void bn_back_out(const T* __restrict dh, const T* __restrict go, const T* __restrict o, const T* __restrict cn,
                        const T* __restrict ty, const T* __restrict gc, T* __restrict dao, T* __restrict dgc,
                        T* __restrict dbc, T* __restrict dcn, T* __restrict s1, T* __restrict s2, int64_t w) {
  for (int64_t j = 0; j < w; ++j) {
    const T dht = dh[j] + go[j];
    dao[j] = dht * ty[j] * o[j] * (1 - o[j]);
    const T dy = dht * o[j] * (1 - ty[j] * ty[j]);
    dgc[j] += dy * cn[j];
    dbc[j] += dy;
    dcn[j] = dy * gc[j];
    s1[j] += dcn[j];
    s2[j] += dcn[j] * cn[j];
  }
}

// Back through the cell state's normalisation (batch: its statistics depend on every running row)
// and the cell update: the input, forget and cell gates' pre-activation gradients, dc_{t-1} in place
// of dc_t.
template <typename T>
inline void bn_back_cell(const T* __restrict dcn, const T* __restrict cn, const T* __restrict rc,
                         const T* __restrict s1, const T* __restrict s2, T inv_n, bool batch, T* __restrict dc,
                         const T* __restrict ki, const T* __restrict kf, const T* __restrict kg, const T* __restrict cp,
                         T* __restrict dai, T* __restrict daf, T* __restrict dag, int64_t w) {
  for (int64_t j = 0; j < w; ++j) {
    const T dcb = batch ? rc[j] * (dcn[j] - s1[j] * inv_n - cn[j] * s2[j] * inv_n) : rc[j] * dcn[j];
    const T dct = dc[j] + dcb, i = ki[j], f = kf[j], g = kg[j];
    dai[j] = dct * g * i * (1 - i);
    daf[j] = dct * cp[j] * f * (1 - f);
    dag[j] = dct * i * (1 - g * g);
    dc[j] = dct * f;
  }
}

// The recurrent term's gain and shift: their gradient sums, dzn = da g and its column sums
template <typename T>
inline void bn_back_gain(const T* __restrict da, const T* __restrict z, const T* __restrict g, T* __restrict db,
                         T* __restrict dg, T* __restrict dz, T* __restrict t1, T* __restrict t2, int64_t w) {
  for (int64_t j = 0; j < w; ++j) {
    db[j] += da[j];
    dg[j] += da[j] * z[j];
    dz[j] = da[j] * g[j];
    t1[j] += dz[j];
    t2[j] += dz[j] * z[j];
  }
}

// The same for the input term's gain and shift, dxn = da g in place of da
template <typename T>
inline void bn_back_gain_io(T* __restrict d, const T* __restrict z, const T* __restrict g, T* __restrict db,
                            T* __restrict dg, T* __restrict t1, T* __restrict t2, int64_t w) {
  for (int64_t j = 0; j < w; ++j) {
    const T da = d[j];
    db[j] += da;
    dg[j] += da * z[j];
    d[j] = da * g[j];
    t1[j] += d[j];
    t2[j] += d[j] * z[j];
  }
}

// Back through a normalisation, in place
template <typename T>
inline void bn_back_norm(T* __restrict dz, const T* __restrict z, const T* __restrict rs, const T* __restrict t1,
                         const T* __restrict t2, T inv_n, bool batch, int64_t w) {
  for (int64_t j = 0; j < w; ++j)
    dz[j] = batch ? rs[j] * (dz[j] - t1[j] * inv_n - z[j] * t2[j] * inv_n) : rs[j] * dz[j];
}

// The statistics of w features of the running rows at step t (row b at V + b * ld), over n rows:
// means into m, biased variances into v, 1 / sqrt(variance + eps) into rs. Summed in double, as
// ATen's batch norm sums float32, so that the squares of values near float32's limit stay finite.
template <typename T>
void batch_stats(const T* V, int64_t ld, int64_t B, const int64_t* len, int64_t t, int64_t n, double eps, T* m, T* v,
                 T* rs, int64_t w) {
  std::vector<double> sm(w, 0.0), sv(w, 0.0);
  const double inv_n = n > 0 ? 1.0 / double(n) : 0.0;
  for (int64_t b = 0; b < B; ++b)
    if (running(len, t, b)) add_to(sm.data(), V + b * ld, w);
  for (int64_t j = 0; j < w; ++j) sm[j] *= inv_n;
  for (int64_t b = 0; b < B; ++b)
    if (running(len, t, b)) add_sq_dev(sv.data(), V + b * ld, sm.data(), w);
  for (int64_t j = 0; j < w; ++j) {
    m[j] = T(sm[j]);
    v[j] = T(sv[j] * inv_n);
    rs[j] = T(1.0 / std::sqrt(sv[j] * inv_n + eps));
  }
}

// The normalisations' gains and shifts of one direction, as raw pointers (absent shifts are zeros).
template <typename scalar_t>
struct BnParams {
  const scalar_t *g_ih, *b_ih, *g_hh, *b_hh, *g_c, *b_c;
};

template <typename scalar_t>
void bn_forward_loop(const Tensor& wx, const Tensor& w_hh, const BnParams<scalar_t>& P, const int64_t* len,
                     const scalar_t* pop, double eps, bool save, Tensor& xn, Tensor& zn, Tensor& kept, Tensor& rstd,
                     Tensor& hs, Tensor& cs, Tensor& out, Tensor& stats, int64_t* N) {
  const int64_t T = wx.size(0), B = wx.size(1), H = w_hh.size(1), G = 4 * H, BH = B * H, S = 18 * H;
  const scalar_t* WX = wx.data_ptr<scalar_t>();
  scalar_t* XN = xn.data_ptr<scalar_t>();
  scalar_t* Z = zn.data_ptr<scalar_t>();
  scalar_t* K = kept.data_ptr<scalar_t>();
  scalar_t* RS = rstd.data_ptr<scalar_t>();
  scalar_t* HS = hs.data_ptr<scalar_t>();
  scalar_t* CS = cs.data_ptr<scalar_t>();
  scalar_t* O = out.data_ptr<scalar_t>();
  scalar_t* ST = pop == nullptr ? stats.data_ptr<scalar_t>() : nullptr;
  const scalar_t e = static_cast<scalar_t>(eps);
  const UnitPacks up(w_hh, T);
  const int64_t blk = unit_block(H), nb = (H + blk - 1) / blk;
  for (int64_t t = 0; t < T; ++t) {
    int64_t n = 0;
    for (int64_t b = 0; b < B; ++b) n += running(len, t, b);
    N[t] = n;
    // where step t's kept values and states are: every step's with save, else one step's and two state rows
    const int64_t sk = save ? t : 0, sp = save ? t : t % 2, sn = save ? t + 1 : (t + 1) % 2;
    scalar_t* Zt = Z + sk * B * G;
    scalar_t* XNt = XN + sk * B * G;
    scalar_t* Kt = K + sk * B * 6 * H;
    const scalar_t* WXt = WX + t * B * G;
    scalar_t* RSt = RS + t * 9 * H;  // [ih | hh (4H each) | c]
    auto block = [&](int64_t qb) {  // units u0 .. u0 + w - 1
      const int64_t u0 = qb * blk, w = std::min(blk, H - u0);
      // the recurrent terms of these units, every row: h_{t-1} W_hh^T
      for (int64_t q = 0; q < 4; ++q) {
        if constexpr (std::is_same_v<scalar_t, float>) {
          if (up.on()) {
            up.acc(4 * qb + q, B, HS + sp * BH, H, Zt + q * H + u0, G, /*set=*/true);
            continue;
          }
        }
        Tensor zq = zn[sk].narrow(1, q * H + u0, w);
        at::mm_out(zq, hs[sp], w_hh.narrow(0, q * H + u0, w).t());
      }
      std::vector<scalar_t> m(9 * w), v(9 * w);  // per gate the input's, per gate the recurrent term's, the cell's
      // the input and recurrent terms' statistics, gate by gate: the batch's, or the population's
      for (int64_t part = 0; part < 2; ++part)
        for (int64_t q = 0; q < 4; ++q) {
          scalar_t* mq = m.data() + (4 * part + q) * w;
          scalar_t* vq = v.data() + (4 * part + q) * w;
          const int64_t at_m = 2 * part * G + q * H + u0, at_v = at_m + G;  // (in stats / population)
          scalar_t* rq = RSt + part * G + q * H + u0;
          if (pop == nullptr) {
            batch_stats((part == 0 ? WXt : Zt) + q * H + u0, G, B, len, t, n, eps, mq, vq, rq, w);
            std::copy(mq, mq + w, ST + t * S + at_m);
            std::copy(vq, vq + w, ST + t * S + at_v);
          } else {
            std::copy(pop + t * S + at_m, pop + t * S + at_m + w, mq);
            for (int64_t j = 0; j < w; ++j) rq[j] = scalar_t(1) / std::sqrt(pop[t * S + at_v + j] + e);
          }
        }
      // the gates and the cell state of every running row (the kept row holds the pre-activations first)
      for (int64_t b = 0; b < B; ++b) {
        const int64_t r = b * H + u0, p = sp * BH + r, nx = sn * BH + r;  // (this row's states)
        if (!running(len, t, b)) {  // past the end: state unchanged, output zero
          std::copy(HS + p, HS + p + w, HS + nx);
          std::copy(CS + p, CS + p + w, CS + nx);
          std::fill(O + t * BH + r, O + t * BH + r + w, scalar_t(0));
          continue;
        }
        scalar_t* z = Zt + b * G;
        const scalar_t* x = WXt + b * G;
        scalar_t* xnr = XNt + b * G;
        scalar_t* k = Kt + b * 6 * H;
        for (int64_t q = 0; q < 4; ++q) {
          const int64_t c = q * H + u0;
          bn_pre(x + c, xnr + c, z + c, k + c, m.data() + q * w, RSt + c, m.data() + (4 + q) * w, RSt + G + c,
                 P.g_ih + c, P.b_ih + c, P.g_hh + c, P.b_hh + c, w);
        }
        bn_cell(k + u0, k + H + u0, k + 2 * H + u0, k + 3 * H + u0, CS + p, CS + nx, w);
      }
      // the cell state's statistics
      scalar_t* mc = m.data() + 8 * w;
      scalar_t* vc = v.data() + 8 * w;
      scalar_t* rc = RSt + 8 * H + u0;
      if (pop == nullptr) {
        batch_stats(CS + sn * BH + u0, H, B, len, t, n, eps, mc, vc, rc, w);
        std::copy(mc, mc + w, ST + t * S + 16 * H + u0);
        std::copy(vc, vc + w, ST + t * S + 17 * H + u0);
      } else {
        std::copy(pop + t * S + 16 * H + u0, pop + t * S + 16 * H + u0 + w, mc);
        for (int64_t j = 0; j < w; ++j) rc[j] = scalar_t(1) / std::sqrt(pop[t * S + 17 * H + u0 + j] + e);
      }
      // the outputs
      for (int64_t b = 0; b < B; ++b) {
        if (!running(len, t, b)) continue;
        const int64_t r = b * H + u0, nx = sn * BH + r;
        scalar_t* k = Kt + b * 6 * H;
        bn_out(CS + nx, mc, RSt + 8 * H + u0, P.g_c + u0, P.b_c + u0, k + 3 * H + u0, k + 4 * H + u0,
               k + 5 * H + u0, HS + nx, O + t * BH + r, w);
      }
    };
    at::parallel_for(0, nb, 1, [&](int64_t q0, int64_t q1) {
      for (int64_t qb = q0; qb < q1; ++qb) block(qb);
    });
  }
}

template <typename scalar_t>
void bn_backward_loop(const Tensor& go, const Tensor& w_hh, const scalar_t* gih, const scalar_t* ghh,
                      const scalar_t* gc, const int64_t* len, bool batch, const Tensor& xn, const Tensor& zn,
                      const Tensor& kept, const Tensor& rstd, const Tensor& cs, const int64_t* N, Tensor& dh,
                      Tensor& dc, Tensor& dxw, Tensor& dz, Tensor& acc) {
  const int64_t T = zn.size(0), B = zn.size(1), H = w_hh.size(1), G = 4 * H, BH = B * H;
  const scalar_t* XN = xn.data_ptr<scalar_t>();
  const scalar_t* GO = go.data_ptr<scalar_t>();
  const scalar_t* Z = zn.data_ptr<scalar_t>();
  const scalar_t* K = kept.data_ptr<scalar_t>();
  const scalar_t* RS = rstd.data_ptr<scalar_t>();
  const scalar_t* CS = cs.data_ptr<scalar_t>();
  scalar_t* DXW = dxw.data_ptr<scalar_t>();
  scalar_t* DZ = dz.data_ptr<scalar_t>();
  scalar_t* DC = dc.data_ptr<scalar_t>();
  // acc: [d b_ih | d g_ih | d b_hh | d g_hh (4H each) | d g_c | d b_c (H each)]
  scalar_t* dbih = acc.data_ptr<scalar_t>();
  scalar_t* dgih = dbih + G;
  scalar_t* dbhh = dbih + 2 * G;
  scalar_t* dghh = dbih + 3 * G;
  scalar_t* dgc = dbih + 4 * G;
  scalar_t* dbc = dgc + H;
  Tensor dcn_t = at::empty({B, H}, zn.options()), dh_prev = at::empty({B, H}, zn.options());
  scalar_t* DCN = dcn_t.data_ptr<scalar_t>();
  const UnitPacks up(w_hh, T, /*backward=*/true);
  const int64_t blk = unit_block(H), nb = (H + blk - 1) / blk;
  for (int64_t t = T - 1; t >= 0; --t) {
    const scalar_t* DH = dh.data_ptr<scalar_t>();
    const int64_t n = N[t];
    const scalar_t inv_n = n > 0 ? scalar_t(1) / scalar_t(n) : scalar_t(0);
    const scalar_t* RSt = RS + t * 9 * H;
    auto block = [&](int64_t qb) {  // units u0 .. u0 + w - 1
      const int64_t u0 = qb * blk, w = std::min(blk, H - u0);
      // column sums: [s1 | s2] of the cell's, [t1 | t2] per gate of the recurrent term's, [t1 | t2] of the input term's
      std::vector<scalar_t> s(2 * w, 0), ts(8 * w, 0), us(8 * w, 0);
      scalar_t *s1 = s.data(), *s2 = s1 + w;
      // h_t = o * ty: the output gate's and the normalised cell state's gradients
      for (int64_t b = 0; b < B; ++b) {
        scalar_t* dx = DXW + (t * B + b) * G;
        scalar_t* dzr = DZ + (t * B + b) * G;
        if (!running(len, t, b)) {  // (its state passes through; nothing of this step depends on it)
          for (int64_t q = 0; q < 4; ++q) {
            std::fill(dx + q * H + u0, dx + q * H + u0 + w, scalar_t(0));
            std::fill(dzr + q * H + u0, dzr + q * H + u0 + w, scalar_t(0));
          }
          continue;
        }
        const scalar_t* k = K + (t * B + b) * 6 * H;
        bn_back_out(DH + b * H + u0, GO + (t * B + b) * H + u0, k + 3 * H + u0, k + 4 * H + u0, k + 5 * H + u0,
                    gc + u0, dx + 3 * H + u0, dgc + u0, dbc + u0, DCN + b * H + u0, s1, s2, w);
      }
      // back through the cell state's normalisation, the cell update and the recurrent term's gain
      for (int64_t b = 0; b < B; ++b) {
        if (!running(len, t, b)) continue;
        const scalar_t* k = K + (t * B + b) * 6 * H;
        const scalar_t* z = Z + (t * B + b) * G;
        scalar_t* dx = DXW + (t * B + b) * G;
        scalar_t* dzr = DZ + (t * B + b) * G;
        bn_back_cell(DCN + b * H + u0, k + 4 * H + u0, RSt + 8 * H + u0, s1, s2, inv_n, batch, DC + b * H + u0,
                     k + u0, k + H + u0, k + 2 * H + u0, CS + t * BH + b * H + u0, dx + u0, dx + H + u0,
                     dx + 2 * H + u0, w);
        const scalar_t* xr = XN + (t * B + b) * G;
        for (int64_t q = 0; q < 4; ++q) {
          const int64_t c = q * H + u0;
          bn_back_gain(dx + c, z + c, ghh + c, dbhh + c, dghh + c, dzr + c, ts.data() + q * w,
                       ts.data() + (4 + q) * w, w);
          bn_back_gain_io(dx + c, xr + c, gih + c, dbih + c, dgih + c, us.data() + q * w, us.data() + (4 + q) * w, w);
        }
      }
      // back through the input and recurrent terms' normalisations
      for (int64_t b = 0; b < B; ++b) {
        if (!running(len, t, b)) continue;
        const scalar_t* z = Z + (t * B + b) * G;
        const scalar_t* xr = XN + (t * B + b) * G;
        scalar_t* dzr = DZ + (t * B + b) * G;
        scalar_t* dx = DXW + (t * B + b) * G;
        for (int64_t q = 0; q < 4; ++q) {
          const int64_t c = q * H + u0;
          bn_back_norm(dzr + c, z + c, RSt + G + c, ts.data() + q * w, ts.data() + (4 + q) * w, inv_n, batch, w);
          bn_back_norm(dx + c, xr + c, RSt + c, us.data() + q * w, us.data() + (4 + q) * w, inv_n, batch, w);
        }
      }
    };
    at::parallel_for(0, nb, 1, [&](int64_t q0, int64_t q1) {
      for (int64_t qb = q0; qb < q1; ++qb) block(qb);
    });
    // dh_{t-1} = dZ_t W_hh (by columns of dh); the rows past their end pass theirs through
    dh_prev.zero_();
    units_dh_product<scalar_t>(dh_prev, dz[t], w_hh, up);
    scalar_t* DHP = dh_prev.data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b)
      if (!running(len, t, b)) std::copy(DH + b * H, DH + (b + 1) * H, DHP + b * H);
    std::swap(dh, dh_prev);
  }
}

}  // namespace

std::vector<Tensor> bn_forward(const Tensor& wx, const Tensor& w_hh, const Tensor& g_ih, const OptTensor& b_ih_opt,
                               const Tensor& g_hh, const OptTensor& b_hh_opt, const Tensor& g_c,
                               const OptTensor& b_c_opt, const Tensor& h0, const Tensor& c0,
                               const OptTensor& lengths_opt, const OptTensor& population_opt, double eps, bool save) {
  TORCH_CHECK(wx.dim() == 3, "wx must be (T, B, 4H)");
  const int64_t T = wx.size(0), B = wx.size(1), H = w_hh.size(1);
  TORCH_CHECK(wx.size(2) == 4 * H && w_hh.size(0) == 4 * H, "wx (T, B, 4H) and w_hh (4H, H) disagree");
  auto opts = wx.options();
  auto shift = [&](const OptTensor& t, int64_t n) {
    const Tensor v = or_empty(t, opts);
    return has_values(v) ? v.contiguous() : at::zeros({n}, opts);
  };
  const Tensor bih = shift(b_ih_opt, 4 * H), bhh = shift(b_hh_opt, 4 * H), bc = shift(b_c_opt, H);
  const Tensor gih = g_ih.contiguous(), ghh = g_hh.contiguous(), gc = g_c.contiguous(), wc = wx.contiguous(),
               w = w_hh.contiguous();
  const Tensor lengths = or_empty(lengths_opt, opts.dtype(at::kLong));
  const Tensor pop = or_empty(population_opt, opts);
  const bool batch = !has_values(pop);
  TORCH_CHECK(batch || (pop.dim() == 2 && pop.size(0) == T && pop.size(1) == 18 * H),
              "population statistics must be (T, 18H)");
  const Tensor popc = batch ? pop : pop.contiguous();
  // (without save, for inference: one step of the kept values and two rows of states)
  const int64_t Tk = save ? T : 1, Ts = save ? T + 1 : 2;
  Tensor xn = pooled_empty({Tk, B, 4 * H}, opts), zn = pooled_empty({Tk, B, 4 * H}, opts),
         kept = pooled_empty({Tk, B, 6 * H}, opts), rstd = at::empty({T, 9 * H}, opts);
  Tensor hs = pooled_empty({Ts, B, H}, opts), cs = pooled_empty({Ts, B, H}, opts), out = at::empty({T, B, H}, opts);
  Tensor stats = at::zeros({batch ? T : 0, 18 * H}, opts), n = at::zeros({T}, opts.dtype(at::kLong));
  hs[0].copy_(h0);
  cs[0].copy_(c0);
  const int64_t* len = has_values(lengths) ? lengths.data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(wx.scalar_type(), "bn_forward", [&] {
    const BnParams<scalar_t> P{gih.data_ptr<scalar_t>(), bih.data_ptr<scalar_t>(), ghh.data_ptr<scalar_t>(),
                               bhh.data_ptr<scalar_t>(),  gc.data_ptr<scalar_t>(),  bc.data_ptr<scalar_t>()};
    bn_forward_loop<scalar_t>(wc, w, P, len, batch ? nullptr : popc.data_ptr<scalar_t>(), eps, save, xn, zn, kept,
                              rstd, hs, cs, out, stats, n.data_ptr<int64_t>());
  });
  const int64_t last = save ? T : T % 2;
  return {out, hs[last].clone(), cs[last].clone(), xn, zn, kept, rstd, hs, cs, stats, n};
}

std::vector<Tensor> bn_backward(const OptTensor& grad_out_opt, const OptTensor& grad_hn_opt,
                                const OptTensor& grad_cn_opt, const Tensor& w_hh, const Tensor& g_ih,
                                const Tensor& g_hh, const Tensor& g_c, const OptTensor& lengths_opt, bool batch,
                                const Tensor& xn, const Tensor& zn, const Tensor& kept, const Tensor& rstd,
                                const Tensor& hs, const Tensor& cs, const Tensor& n) {
  const FlushDenormals flush;  // (a gradient shrinking over many steps: common.h)
  const int64_t T = zn.size(0), B = zn.size(1), H = w_hh.size(1);
  auto opts = zn.options();
  const Tensor grad_out = or_empty(grad_out_opt, opts), grad_hn = or_empty(grad_hn_opt, opts),
               grad_cn = or_empty(grad_cn_opt, opts);
  const Tensor lengths = or_empty(lengths_opt, opts.dtype(at::kLong));
  Tensor dh = has_values(grad_hn) ? grad_hn.contiguous().clone() : at::zeros({B, H}, opts);
  Tensor dc = has_values(grad_cn) ? grad_cn.contiguous().clone() : at::zeros({B, H}, opts);
  const Tensor go = has_values(grad_out) ? grad_out.contiguous() : pooled_zeros({T, B, H}, opts);
  const Tensor w = w_hh.contiguous(), gih = g_ih.contiguous(), ghh = g_hh.contiguous(), gc = g_c.contiguous(),
               nc = n.contiguous();
  Tensor dwx = pooled_empty({T, B, 4 * H}, opts), dz = pooled_empty({T, B, 4 * H}, opts), acc = at::zeros({18 * H}, opts);
  const int64_t* len = has_values(lengths) ? lengths.data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(zn.scalar_type(), "bn_backward", [&] {
    bn_backward_loop<scalar_t>(go, w, gih.data_ptr<scalar_t>(), ghh.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(), len,
                               batch, xn, zn, kept, rstd, cs, nc.data_ptr<int64_t>(), dh, dc, dwx, dz, acc);
  });
  // dW_hh = sum over steps of dZ_t^T h_{t-1}, one product
  Tensor dw_hh = at::mm(dz.view({T * B, 4 * H}).t(), hs.narrow(0, 0, T).reshape({T * B, H}));
  // d wx, dW_hh, d g_ih, d b_ih, d g_hh, d b_hh, d g_c, d b_c, dh0, dc0
  auto part = [&](int64_t at, int64_t size) { return acc.narrow(0, at, size); };
  return {dwx, dw_hh, part(4 * H, 4 * H), part(0, 4 * H), part(12 * H, 4 * H), part(8 * H, 4 * H),
          part(16 * H, H), part(17 * H, H), dh, dc};
}

}  // namespace phasedlstm
