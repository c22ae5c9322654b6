// The LSTM, peephole LSTM and Phased LSTM over all steps of one direction: the hand-written backward.
#include "schedule.h"
#include "ops.h"

namespace phasedlstm {

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
    const scalar_t tc = tanh_exact(c);
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

// dx, the weight gradients and db from every step's gate gradients dgall (T, B, 4H), one product each
// over the valid steps (valid_step_products), written straight into the gradients' own layouts:
// dW_hh = dG^T h_{t-1} (4H, H), dW_ih = dG^T x (4H, I), db = the sum of dG's rows. (No per-thread
// partials to zero, add up and transpose: at a few steps those passes over weight-sized buffers cost
// more than the products.)
static void grads_over_steps(const Tensor& dgall, const int64_t* len, const Tensor& x, const Tensor& hs,
                             const Tensor& w_ih, Tensor& dx, Tensor& dw_hh, Tensor& dw_ih, Tensor& db) {
  const int64_t T = dgall.size(0), B = dgall.size(1), I = x.size(2), H = hs.size(2);
  Tensor dg = dgall.view({T * B, 4 * H}), h = hs.narrow(0, 0, T).reshape({T * B, H}), xr = x.reshape({T * B, I});
  valid_step_products(len, T, B, w_ih, dx.view({T * B, I}), dg, {&h, &xr});
  at::mm_out(dw_hh, dg.t(), h);
  at::mm_out(dw_ih, dg.t(), xr);
  at::sum_out(db, dg, 0);
}

// The backward of the unit split: per step, the element-wise pass over each thread's units
// (all sequences) gives the gate gradients dG_t, kept for every step; then dh_{t-1} += dG_t W_hh,
// each thread its block of dh's columns (the same units: the next step's element-wise pass reads
// only its own columns). With the micro-kernel's packs one parallel region runs all steps, a barrier
// between the two halves of a step (the products read every unit's dG_t); otherwise two fork/joins
// per step. The weight gradients, dx and db are each one GEMM over the valid steps at the end
// (grads_over_steps).
template <typename scalar_t, bool PEEP, bool PHASED>
void units_backward(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh, const scalar_t* wci, const scalar_t* kgate,
                    int64_t kB, const scalar_t* GO, const int64_t* len, const Tensor& acts, const Tensor& hs,
                    const Tensor& cs, Tensor& dhb, Tensor& dcb, Tensor& dx, Tensor& dw_hh, Tensor& dw_ih, Tensor& db,
                    Tensor& dpeep_parts, scalar_t* DK) {
  const int64_t T = acts.size(0), B = acts.size(1), H = w_hh.size(1), BH = B * H;
  scalar_t* DHB = dhb.data_ptr<scalar_t>();
  scalar_t* DCB = dcb.data_ptr<scalar_t>();
  Tensor dgall = pooled_empty({T, B, 4 * H}, acts.options());
  scalar_t* DGA = dgall.data_ptr<scalar_t>();
  const scalar_t* A = acts.data_ptr<scalar_t>();
  const scalar_t* HS = hs.data_ptr<scalar_t>();
  const scalar_t* CS = cs.data_ptr<scalar_t>();
  scalar_t* DPEEP = PEEP ? dpeep_parts.data_ptr<scalar_t>() : nullptr;  // (threads, 3, H)
  const int64_t blk = unit_block(H), nb = (H + blk - 1) / blk;
  const Tensor W = w_hh.detach();  // (as in forward_loop)
  const UnitPacks up(w_hh, T, /*backward=*/true);
  // step t's element-wise pass over blocks q0..q1, by thread tid (its peephole and gate sums)
  auto elementwise = [&](int64_t t, int64_t tid, int64_t q0, int64_t q1) {
    const int64_t cur = (t + 1) % 2, prv = t % 2;
    scalar_t* acc = PEEP ? DPEEP + tid * 3 * H : nullptr;
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
            PHASED ? kgate + t * kB * H + (kB == 1 ? u0 : r) : nullptr, PEEP ? wci + u0 : nullptr,
            PEEP ? wci + H + u0 : nullptr, PEEP ? wci + 2 * H + u0 : nullptr, d, d + H, d + 2 * H, d + 3 * H, dhp,
            dcp, PHASED ? dk_base + (kB == 1 ? t * H + u0 : p) : nullptr, PEEP ? acc + u0 : nullptr,
            PEEP ? acc + H + u0 : nullptr, PEEP ? acc + 2 * H + u0 : nullptr, hb);
      }
    }
  };
  bool done = false;
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (up.on()) {
      in_team(nb, [&](int64_t tid, int64_t nth, auto barrier) {
        const int64_t q0 = tid * nb / nth, q1 = (tid + 1) * nb / nth;
        for (int64_t t = T - 1; t >= 0; --t) {
          elementwise(t, tid, q0, q1);
          barrier();  // every unit's dG_t, before the products read it
          const bool back = backwards(t);
          for (int64_t j = q0; j < q1; ++j) {  // dh_{t-1} += dG_t W_hh, this thread's columns of dh
            const int64_t q = in_step_order(j, q0, q1, back);
            up.acc(q, B, DGA + t * 4 * BH, 4 * H, DHB + (t % 2) * BH + q * blk, H, /*set=*/false, back);
          }
        }
      });
      done = true;
    }
  }
  for (int64_t t = T - 1; t >= 0 && !done; --t) {
    at::parallel_for(0, nb, 1, [&](int64_t q0, int64_t q1) { elementwise(t, at::get_thread_num(), q0, q1); });
    const Tensor dgt = dgall[t];
    Tensor dhprev = dhb[t % 2];
    units_dh_product<scalar_t>(dhprev, dgt, W, up);  // dh_{t-1} += dG_t W_hh, by columns of dh
  }
  grads_over_steps(dgall, len, x, hs, w_ih, dx, dw_hh, dw_ih, db);
}

// The backward, all in one parallel region over the batch. Per step and thread: the
// element-wise pass gives the gate gradients dG of its rows (kept for this step only), then
//   dh_{t-1} += dG W_hh,  dx_t = dG W_ih,  and the weight-gradient sums
//   dW_hh^T += h_{t-1}^T dG,  dW_ih^T += x_t^T dG,  db += sum of dG rows
// accumulate in per-thread partials, added up at the end. With few sequences per thread
// (defer_weight_grads, schedule.h) those per-step sums are products of rank a few, each streaming the
// whole weight gradient through the cache: there dG is kept for every step and dx and the weight
// gradients are each one product over the valid steps after the loop (as in units_backward).
// (For few sequences and a large W_hh: units_backward.)

template <typename scalar_t, bool PEEP, bool PHASED>
void backward_loop(const Tensor& grad_out, const Tensor& x, const Tensor& w_ih, const Tensor& w_hh, const Tensor& peep,
                   const Tensor& k, const int64_t* len, const Tensor& acts, const Tensor& hs, const Tensor& cs,
                   Tensor& dh, Tensor& dc, Tensor& dx, Tensor& dwhh_t, Tensor& dwih_t, Tensor& dbias,
                   Tensor& dw_hh, Tensor& dw_ih, Tensor& db_all, Tensor& dpeep_parts, Tensor& dk, bool units) {
  const int64_t T = acts.size(0), B = acts.size(1), I = x.size(2), H = w_hh.size(1), BH = B * H;
  const scalar_t* wci = PEEP ? peep.data_ptr<scalar_t>() : nullptr;
  const scalar_t* wcf = PEEP ? wci + H : nullptr;
  const scalar_t* wco = PEEP ? wci + 2 * H : nullptr;
  const RecurrentProduct rec(w_hh, /*transpose=*/false, /*pack=*/!units), rin(w_ih, /*transpose=*/false, /*pack=*/!units);
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
  scalar_t* DX = dx.data_ptr<scalar_t>();
  const scalar_t* kgate = PHASED ? k.data_ptr<scalar_t>() : nullptr;
  const int64_t kB = PHASED ? k.size(1) : 0;
  const scalar_t* GO = grad_out.data_ptr<scalar_t>();
  scalar_t* DK = PHASED ? dk.data_ptr<scalar_t>() : nullptr;
  const bool deferred = !units && defer_weight_grads(B, H);
  Tensor dgall = deferred ? pooled_empty({T, B, 4 * H}, acts.options()) : Tensor();
  scalar_t* DGA = deferred ? dgall.data_ptr<scalar_t>() : nullptr;
  if (units)
    units_backward<scalar_t, PEEP, PHASED>(x, w_ih, w_hh, wci, kgate, kB, GO, len, acts, hs, cs, dhb, dcb, dx, dw_hh,
                                           dw_ih, db_all, dpeep_parts, DK);
  else at::parallel_for(0, B, batch_grain(B), [&](int64_t b0, int64_t b1) {
    const int64_t Bt = b1 - b0, tid = at::get_thread_num();
    scalar_t* acc = PEEP ? dpeep_parts[tid].data_ptr<scalar_t>() : nullptr;
    // dk: (T, B, H) per sequence, or with shared timestamps (kB == 1) this thread's sum (T, H)
    scalar_t* dk_base = PHASED ? (kB == 1 ? DK + tid * T * H : DK) : nullptr;
    Tensor dg = at::empty({Bt, 4 * H}, acts.options());  // this step's gate gradients, this thread's rows
    StepGrads<scalar_t> products(rec, rin, HS, X, B, H, I, b0, Bt, acts.options());
    // per-thread partials of the weight gradients (none when they are formed after the loop)
    Tensor dwhh = deferred ? Tensor() : dwhh_t[tid], dwih = deferred ? Tensor() : dwih_t[tid];
    scalar_t* DG = dg.data_ptr<scalar_t>();
    scalar_t* DB = deferred ? nullptr : dbias[tid].data_ptr<scalar_t>();
    std::vector<int64_t> rows;  // the rows still running at step t (with lengths)
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t cur = (t + 1) % 2, prv = t % 2;
      const bool compact = running_rows(run_len, t, b0, b1, rows);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r = b * H, p = t * BH + r, n = (t + 1) * BH + r, g4 = t * 4 * BH + 4 * r;
        const scalar_t *dh = DHB + cur * BH + r, *dc = DCB + cur * BH + r;
        scalar_t *dhp = DHB + prv * BH + r, *dcp = DCB + prv * BH + r;
        scalar_t* d = deferred ? DGA + g4 : DG + (b - b0) * 4 * H;
        if (len != nullptr && t >= len[b]) {
          pass_row(dh, dc, d, H, dhp, dcp, H);
          continue;
        }
        const scalar_t* g = A + g4;
        backward_row<scalar_t, PEEP, PHASED>(g, g + H, g + 2 * H, g + 3 * H, dh, dc, GO + p, HS + p, CS + p, CS + n,
                                             PHASED ? kgate + t * kB * H + (kB == 1 ? 0 : r) : nullptr, wci, wcf, wco, d,
                                             d + H, d + 2 * H, d + 3 * H, dhp, dcp,
                                             PHASED ? dk_base + (kB == 1 ? t * H : p) : nullptr,
                                             PEEP ? acc : nullptr, PEEP ? acc + H : nullptr,
                                             PEEP ? acc + 2 * H : nullptr, H);
        if (!deferred) add_row(d, DB, 4 * H);
      }
      if (deferred) {  // dh_{t-1} += dG_t W_hh only
        if (compact) products.dh_running(rows, DGA + t * 4 * BH, DHB + prv * BH);
        else rec.acc_rows<scalar_t>(Bt, DGA + (t * B + b0) * 4 * H, DHB + prv * BH + b0 * H, 0, 0, false, backwards(t));
      } else if (compact) {
        products.running(t, rows, DG, DHB + prv * BH, dx[t].narrow(0, b0, Bt), dwhh, dwih);
      } else {
        products(t, DG, DG, DHB + prv * BH + b0 * H, DX + (t * B + b0) * I, dwhh, dwih);
      }
    }
  });
  if (deferred) grads_over_steps(dgall, len, x, hs, w_ih, dx, dw_hh, dw_ih, db_all);
  dh.copy_(dhb[0]);
  dc.copy_(dcb[0]);
}

std::vector<Tensor> lstm_backward(const OptTensor& grad_out_opt, const OptTensor& grad_hn_opt,
                                  const OptTensor& grad_cn_opt, const Tensor& x, const Tensor& w_ih,
                                  const Tensor& w_hh, const OptTensor& peep_opt, const OptTensor& k_opt,
                                  const OptTensor& lengths_opt, const Tensor& acts, const Tensor& hs,
                                  const Tensor& cs) {
  const FlushDenormals flush;  // (a gradient shrinking over many steps: common.h)
  const Tensor grad_out = or_empty(grad_out_opt, x.options());
  const Tensor grad_hn = or_empty(grad_hn_opt, x.options());
  const Tensor grad_cn = or_empty(grad_cn_opt, x.options());
  const Tensor peep = or_empty(peep_opt, x.options());
  const Tensor k = or_empty(k_opt, x.options());
  const Tensor lengths = or_empty(lengths_opt, x.options().dtype(at::kLong));
  const int64_t T = acts.size(0), B = acts.size(1), I = x.size(2), H = w_hh.size(1);
  const int64_t nt = at::get_num_threads();
  auto opts = acts.options();
  const bool peephole = has_values(peep), phased = has_values(k);
  Tensor dh = has_values(grad_hn) ? grad_hn.contiguous().clone() : at::zeros({B, H}, opts);
  Tensor dc = has_values(grad_cn) ? grad_cn.contiguous().clone() : at::zeros({B, H}, opts);
  Tensor dx = at::empty({T, B, I}, opts);
  const bool units = split_units(B, H);
  // The weight gradients: formed once over all steps after the loop (the unit split, or few sequences
  // per thread), straight into their own layouts; otherwise summed per thread, step by step, into
  // partials (H, 4H) that are added up and transposed at the end.
  const bool at_end = weight_grads_at_end(B, H);
  const int64_t parts = at_end ? 0 : nt;
  Tensor dwhh_t = at::zeros({parts, H, 4 * H}, opts), dwih_t = at::zeros({parts, I, 4 * H}, opts);
  Tensor dbias = at::zeros({parts, 4 * H}, opts);
  Tensor dw_hh = at::empty({at_end ? 4 * H : 0, H}, opts), dw_ih = at::empty({at_end ? 4 * H : 0, I}, opts);
  Tensor db = at::empty({at_end ? 4 * H : 0}, opts);
  const bool shared_k = phased && k.size(1) == 1;
  // dk accumulates: zeros, per sequence (T, B, H), or per thread (threads, T, H) when shared
  Tensor dk = !phased ? at::empty({0}, opts) : (shared_k ? pooled_zeros({nt, T, H}, opts) : pooled_zeros({T, B, H}, opts));
  Tensor dpeep_parts = peephole ? at::zeros({nt, 3, H}, opts) : at::empty({0}, opts);
  const Tensor go = has_values(grad_out) ? grad_out.contiguous() : pooled_zeros({T, B, H}, opts);
  const Tensor xc = x.contiguous(), wi = w_ih.contiguous(), w = w_hh.contiguous();
  const Tensor kc = phased ? k.contiguous() : k;
  const int64_t* len = has_values(lengths) ? lengths.data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(acts.scalar_type(), "lstm_backward", [&] {
    with_flags(peephole, phased, [&](auto peep_flag, auto phased_flag) {
      backward_loop<scalar_t, decltype(peep_flag)::value, decltype(phased_flag)::value>(
          go, xc, wi, w, peep, kc, len, acts, hs, cs, dh, dc, dx, dwhh_t, dwih_t, dbias, dw_hh, dw_ih, db, dpeep_parts, dk,
          units);
    });
  });
  if (!at_end) {
    dw_hh = dwhh_t.sum(0).t().contiguous();
    dw_ih = dwih_t.sum(0).t().contiguous();
    db = dbias.sum(0);
  }
  Tensor dpeep = peephole ? dpeep_parts.sum(0) : at::empty({0}, opts);
  if (shared_k) dk = dk.sum(0).unsqueeze(1);  // (T, 1, H)
  return {dx, dw_ih, db, dw_hh, dh, dc, dpeep, dk};
}

}  // namespace phasedlstm
