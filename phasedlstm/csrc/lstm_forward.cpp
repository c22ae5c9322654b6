// The LSTM, peephole LSTM and Phased LSTM over all steps of one direction: the forward.
#include "schedule.h"
#include "ops.h"

namespace phasedlstm {

// Steps t0 .. t0+n-1 of the unit split (gbuf[slot] holds x_t W_ih^T): per step, each thread its
// block of units: + h_{t-1} W_hh^T on its units' columns of the four gates, + b (bi: null without a
// bias), then their update.
// With the micro-kernel's packs, one parallel region runs all steps, a barrier between them (the
// next step reads every unit's h); otherwise a fork/join per step around at::addmm_.
template <typename scalar_t, bool PEEP, bool PHASED, bool OUT>
void units_steps(Tensor& gbuf, Tensor& hbuf, Tensor& cbuf, const Tensor& W, const UnitPacks& up, const scalar_t* kgate,
                 int64_t kB, const scalar_t* wci, const scalar_t* bi, scalar_t* O, const int64_t* len, bool save,
                 int64_t t0, int64_t n) {
  const int64_t B = hbuf.size(1), H = hbuf.size(2), BH = B * H;
  const int64_t blk = unit_block(H), nb = (H + blk - 1) / blk;
  scalar_t* HS = hbuf.data_ptr<scalar_t>();
  scalar_t* CS = cbuf.data_ptr<scalar_t>();
  scalar_t* GB = gbuf.data_ptr<scalar_t>();
  // step t's update of block q, its gate rows G (B, 4H) already summed
  auto update = [&](int64_t t, int64_t q, scalar_t* G) {
    const int64_t sp = save ? t : t % 2, sn = save ? t + 1 : (t + 1) % 2;
    const int64_t u0 = q * blk, hb = std::min(blk, H - u0);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t r = b * H + u0;
      scalar_t* g = G + 4 * b * H + u0;
      scalar_t *hp = HS + sp * BH + r, *cp = CS + sp * BH + r, *hn = HS + sn * BH + r, *cn = CS + sn * BH + r;
      if (len != nullptr && t >= len[b]) {  // (lengths imply OUT)
        ended_row(hp, cp, hn, cn, O + t * BH + r, hb);
        continue;
      }
      const scalar_t* kk = PHASED ? kgate + t * kB * H + (kB == 1 ? u0 : r) : nullptr;
      if (bi != nullptr)
        for (int64_t gate = 0; gate < 4; ++gate) add_row(bi + gate * H + u0, g + gate * H, hb);
      forward_row<scalar_t, PEEP, PHASED, OUT>(g, g + H, g + 2 * H, g + 3 * H, hp, cp, hn, cn,
                                               OUT ? O + t * BH + r : nullptr, PEEP ? wci + u0 : nullptr,
                                               PEEP ? wci + H + u0 : nullptr, PEEP ? wci + 2 * H + u0 : nullptr, kk, hb);
    }
  };
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (up.on()) {
      in_team(nb, [&](int64_t tid, int64_t nth, auto barrier) {
        const int64_t q0 = tid * nb / nth, q1 = (tid + 1) * nb / nth;
        for (int64_t t = t0; t < t0 + n; ++t) {
          float* G = GB + (save ? t : t - t0) * B * 4 * H;
          const float* hprev = HS + (save ? t : t % 2) * BH;
          const bool back = backwards(t);
          for (int64_t j = q0; j < q1; ++j) {
            const int64_t q = in_step_order(j, q0, q1, back);
            for (int64_t i = 0; i < 4; ++i) {
              const int64_t gate = in_step_order(i, 0, 4, back);
              up.acc(4 * q + gate, B, hprev, H, G + gate * H + q * blk, 4 * H, /*set=*/false, back);
            }
            update(t, q, G);
          }
          barrier();
        }
      });
      return;
    }
  }
  for (int64_t t = t0; t < t0 + n; ++t) {
    const int64_t slot = save ? t : t - t0;
    Tensor gates = gbuf[slot];
    const Tensor hprev = hbuf[save ? t : t % 2];
    at::parallel_for(0, nb, 1, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t u0 = q * blk, hb = std::min(blk, H - u0);
        for (int64_t gate = 0; gate < 4; ++gate)  // + h_{t-1} W_hh^T, this block's columns of each gate
          gates.narrow(1, gate * H + u0, hb).addmm_(hprev, W.narrow(0, gate * H + u0, hb).t());
        update(t, q, gates.data_ptr<scalar_t>());
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
  // together. No separate large GEMM, one pass over the gate rows, and they stay in cache. Not
  // where I is large (inputs_per_step).
  const bool fused_in = !units && RecurrentProduct::packable(w_hh, /*transpose=*/true) && inputs_per_step(I, H);
  const int64_t* run_len = running_rows_enabled() ? len : nullptr;  // (products on the running rows)
  const RecurrentProduct rec(w_hh, /*transpose=*/true, /*pack=*/!fused_in && !units);  // (batch split without fused_in)
  // (grad mode is per thread: a worker's view of a weight that requires grad would be tracked)
  const Tensor W = units ? w_hh.detach() : Tensor();
  const UnitPacks up(units ? w_hh : Tensor(), units ? T : 0);
  PackedB cat;
  if (fused_in) {
    cat = pack_b_cat(w_ih, w_hh);  // [W_ih | W_hh]^T: K = I + H, N = 4H
  }
  const scalar_t* wci = PEEP ? peep.data_ptr<scalar_t>() : nullptr;
  const scalar_t* wcf = PEEP ? wci + H : nullptr;
  const scalar_t* wco = PEEP ? wci + 2 * H : nullptr;
  const scalar_t* kgate = PHASED ? k.data_ptr<scalar_t>() : nullptr;
  // The bias: with fused_in it starts the per-step GEMM's sums (zeros without one); otherwise each
  // gate row gets it just before its update (in cache then), not the input GEMM: at::addmm_out would
  // first write it into every row of the gate buffer, a pass over T x B x 4H values (docs/speed.md).
  const Tensor bias_c = bias.numel() > 0 ? bias.contiguous() : (fused_in ? at::zeros({4 * H}, x.options()) : Tensor());
  const float* bias_or_zero = fused_in ? reinterpret_cast<const float*>(bias_c.data_ptr()) : nullptr;
  const scalar_t* BI = !fused_in && bias_c.defined() ? bias_c.data_ptr<scalar_t>() : nullptr;
  scalar_t* O = OUT ? out.data_ptr<scalar_t>() : nullptr;
  // training: gates and states of every step are kept; inference: the gates of a chunk of
  // steps (one step's when the projection is fused), and two state rows (ping-pong)
  const int64_t chunk = save || fused_in ? T : infer_chunk(T, BH);
  Tensor gbuf = save ? acts : pooled_empty({fused_in ? 1 : chunk, B, 4 * H}, x.options());
  Tensor hbuf = save ? hs : at::empty({2, B, H}, x.options());
  Tensor cbuf = save ? cs : at::empty({2, B, H}, x.options());
  hbuf[0].copy_(h0);
  cbuf[0].copy_(c0);
  scalar_t* HS = hbuf.data_ptr<scalar_t>();
  scalar_t* CS = cbuf.data_ptr<scalar_t>();
  scalar_t* GB = gbuf.data_ptr<scalar_t>();
  for (int64_t t0 = 0; t0 < T; t0 += chunk) {
    const int64_t n = std::min(chunk, T - t0);
    if (!fused_in) {  // input projection of steps t0 .. t0+n-1 in one (multi-threaded) GEMM
      Tensor g2 = gbuf.narrow(0, save ? t0 : 0, n).view({n * B, 4 * H});
      const Tensor x2 = x.narrow(0, t0, n).reshape({n * B, I});
      at::mm_out(g2, x2, w_ih_t);
    }
    if (units) {
      units_steps<scalar_t, PEEP, PHASED, OUT>(gbuf, hbuf, cbuf, W, up, kgate, kB, wci, BI, O, len, save, t0, n);
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
        scalar_t* G = GB + (slot * B + b0) * 4 * H;  // this thread's gate rows of the step
        const bool compact = running_rows(run_len, t, b0, b1, rows);
        const bool back = backwards(t);
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
            if (!compact) gemm_acc(Bt, xh.data(), I + H, cat, G, 4 * H, bias_or_zero, 0, back);  // (the bias starts the sums)
            else if (m > 0) {
              gemm_acc(m, xh.data(), I + H, cat, gc.data_ptr<float>(), 4 * H, bias_or_zero, 0, back);
              scatter_rows(gc.data_ptr<float>(), rows, b0, 4 * H, G, 4 * H);
            }
          }
        }
        if (!fused_in && !compact) rec.acc_rows<scalar_t>(Bt, HS + sp * BH + b0 * H, G, 0, 0, false, back);  // + h W_hh^T
        if (!fused_in && compact && m > 0) {  // the same on the running rows
          gather_rows(HS + sp * BH, H, rows, 0, H, hc.data_ptr<scalar_t>());
          gather_rows(G, 4 * H, rows, b0, 4 * H, gc.data_ptr<scalar_t>());
          rec.acc_rows<scalar_t>(m, hc.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(), 0, 0, false, back);
          scatter_rows(gc.data_ptr<scalar_t>(), rows, b0, 4 * H, G, 4 * H);
        }
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t r = b * H;
          scalar_t* g = G + 4 * (b - b0) * H;
          scalar_t *hp = HS + sp * BH + r, *cp = CS + sp * BH + r, *hn = HS + sn * BH + r, *cn = CS + sn * BH + r;
          if (len != nullptr && t >= len[b]) {  // past the end: state unchanged, output zero
            ended_row(hp, cp, hn, cn, O + t * BH + r, H);
            continue;
          }
          const scalar_t* kk = PHASED ? kgate + t * kB * H + (kB == 1 ? 0 : r) : nullptr;
          if (BI != nullptr) add_row(BI, g, 4 * H);
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

std::vector<Tensor> lstm_forward(const Tensor& x, const Tensor& w_ih, const OptTensor& bias_opt, const Tensor& w_hh,
                                 const Tensor& h0, const Tensor& c0, const OptTensor& peep_opt,
                                 const OptTensor& k_opt, const OptTensor& lengths_opt, bool save) {
  const Tensor bias = or_empty(bias_opt, x.options());
  const Tensor peep = or_empty(peep_opt, x.options());
  const Tensor k = or_empty(k_opt, x.options());
  const Tensor lengths = or_empty(lengths_opt, x.options().dtype(at::kLong));
  TORCH_CHECK(x.dim() == 3, "x must be (T, B, I)");
  const int64_t T = x.size(0), B = x.size(1), H = w_hh.size(1);
  TORCH_CHECK(w_ih.size(0) == 4 * H && w_hh.size(0) == 4 * H && w_ih.size(1) == x.size(2), "weights do not fit");
  auto opts = x.options();
  const bool peephole = has_values(peep), phased = has_values(k);
  // training without lengths: the output is the saved states h_1..h_T themselves (then not on a
  // pooled block: the caller gets it)
  const bool own_out = !save || has_values(lengths);
  Tensor acts = save ? pooled_empty({T, B, 4 * H}, opts) : at::empty({0}, opts);
  // saved states: hs[0] = h0, hs[t + 1] = h_t; in inference only the final state (B, H)
  Tensor hs = save ? (own_out ? pooled_empty({T + 1, B, H}, opts) : at::empty({T + 1, B, H}, opts)) : at::empty({B, H}, opts);
  Tensor cs = save ? pooled_empty({T + 1, B, H}, opts) : at::empty({B, H}, opts);
  Tensor out = own_out ? at::empty({T, B, H}, opts) : hs.narrow(0, 1, T);
  const Tensor xc = x.contiguous(), wi = w_ih.contiguous(), w = w_hh.contiguous();
  const Tensor pp = peephole ? peep.contiguous() : peep;
  const Tensor kk = phased ? k.contiguous() : k;
  const int64_t* len = has_values(lengths) ? lengths.data_ptr<int64_t>() : nullptr;
  const bool units = split_units(B, H, /*packed_infer=*/!save && RecurrentProduct::packable(w, /*transpose=*/true));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lstm_forward", [&] {
    with_flags(peephole, phased, [&](auto peep_flag, auto phased_flag) {
      constexpr bool P = decltype(peep_flag)::value, Q = decltype(phased_flag)::value;
      if (own_out) forward_loop<scalar_t, P, Q, true>(xc, wi, bias, w, h0, c0, pp, kk, len, save, units, acts, hs, cs, out);
      else forward_loop<scalar_t, P, Q, false>(xc, wi, bias, w, h0, c0, pp, kk, len, save, units, acts, hs, cs, out);
    });
  });
  Tensor hn = save ? hs[T].clone() : hs, cn = save ? cs[T].clone() : cs;
  return {out, hn, cn, acts, hs, cs};
}

}  // namespace phasedlstm
