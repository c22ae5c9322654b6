// How one step's work is shared among threads: by sequences (the batch split) or by units (the
// unit split, for few sequences and a large W_hh), and the running rows of a padded batch.
#pragma once

#include <omp.h>

#include "gemm.h"

namespace phasedlstm {

// The recurrent product for this thread's rows: out_rows (M x N) += in_rows (M x K) B, where B
// is W_hh^T (forward: K = H, N = 4H) or W_hh (backward: K = 4H, N = H).
struct RecurrentProduct {
  Tensor b_for_aten;  // what at::addmm_ multiplies by
  PackedB packed;
  Tensor zeros;  // (N, float32) with the packed kernel: set() writes 0 + A B, without a zeroing pass first
  bool use_packed = false;
  int64_t K = 0, N = 0;

  // Whether the micro-kernel serves this product: float32 on AVX-512 or AVX2, and N >= kNR
  // (narrower products, e.g. dx = dG W_ih for a few input features, waste most of a panel and
  // stay with at::addmm_).
  static bool packable(const Tensor& w, bool transpose) {
    return kHavePacked && w.scalar_type() == at::kFloat && (transpose ? w.size(0) : w.size(1)) >= kNR && packed_enabled();
  }

  // pack = false: never pack (the caller multiplies by W some other way on the packed path)
  RecurrentProduct(const Tensor& w_hh, bool transpose, bool pack = true) {
    // (detached: grad mode is per thread, and a worker's product with a weight that requires grad
    // would be tracked, or refused by the out= variant)
    b_for_aten = (transpose ? w_hh.t() : w_hh).detach();
    K = b_for_aten.size(0);
    N = b_for_aten.size(1);
    use_packed = pack && packable(w_hh, transpose);
    if (use_packed) {
      const int64_t R = w_hh.size(0), Cc = w_hh.size(1);  // (4H, H), row-major
      // transpose: B = W^T, B[k][n] = W[n][k] (K = H, N = 4H); else B = W, B[k][n] = W[k][n]
      packed = transpose ? pack_b(w_hh, Cc, R, /*sk=*/1, /*sn=*/Cc) : pack_b(w_hh, R, Cc, /*sk=*/Cc, /*sn=*/1);
      zeros = at::zeros({packed.N}, w_hh.options());
    }
  }

  // out (M x N, row stride ldo) += in (M x K, row stride ldi); with set, out = that product (not read,
  // no zeroing pass first). On raw rows: the per-step loops call it, and a Tensor view per step and
  // thread costs about a microsecond.
  // reverse: the panels in reverse order (gemm_acc; loops alternate it from step to step).
  template <typename scalar_t>
  void acc_rows(int64_t M, const scalar_t* in, scalar_t* out, int64_t ldi = 0, int64_t ldo = 0, bool set = false,
                bool reverse = false) const {
    if (M <= 0) return;
    ldi = ldi > 0 ? ldi : K;
    ldo = ldo > 0 ? ldo : N;
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (use_packed) {
        gemm_acc(M, in, ldi, packed, out, ldo, set ? zeros.data_ptr<float>() : nullptr, 0, reverse);
        return;
      }
    }
    const auto opts = b_for_aten.options();
    Tensor o = at::from_blob(out, {M, N}, {ldo, 1}, opts);
    const Tensor i = at::from_blob(const_cast<scalar_t*>(in), {M, K}, {ldi, 1}, opts);
    if (set) at::mm_out(o, i, b_for_aten);
    else o.addmm_(i, b_for_aten);
  }
  template <typename scalar_t>
  void set_rows(int64_t M, const scalar_t* in, int64_t ldi, scalar_t* out, int64_t ldo, bool reverse = false) const {
    acc_rows<scalar_t>(M, in, out, ldi, ldo, /*set=*/true, reverse);
  }
};

// Sequences of different lengths: once a quarter or more of a thread's rows have ended, the
// per-step products run on the rows still running only (gathered into a compact block, the
// results scattered back), instead of multiplying ended rows whose results are thrown away.
// The lengths of a batch of the frequency tasks are uniform over a range (the high-resolution
// one: 150-1250 steps), so about 40% of the products of a step loop are on ended rows.
// options().running_rows = false switches it off (benchmarks: scripts/bench_lengths.py).
inline bool running_rows_enabled() { return options().running_rows; }

// rows: the thread's rows b (global indices) with t < len[b]; returns whether to compact.
inline bool running_rows(const int64_t* len, int64_t t, int64_t b0, int64_t b1, std::vector<int64_t>& rows) {
  if (len == nullptr) return false;
  rows.clear();
  for (int64_t b = b0; b < b1; ++b)
    if (t < len[b]) rows.push_back(b);
  return int64_t(rows.size()) * 4 <= (b1 - b0) * 3;
}

// After a backward that kept every step's gradients (rows t * B + b): dx2 (T*B, I) = d_in W_ih, and
// d_in and each tensor of `rows` (T*B rows each) narrowed to the valid steps (t < len[b]), for the
// weight gradients formed from them: a padded step's input or state (inf or NaN too) takes no part,
// and its dx is 0. Without lengths every row stays.
inline void valid_step_products(const int64_t* len, int64_t T, int64_t B, const Tensor& w_ih, Tensor dx2, Tensor& d_in,
                                std::initializer_list<Tensor*> rows) {
  if (len == nullptr) {
    at::mm_out(dx2, d_in, w_ih);
    return;
  }
  std::vector<int64_t> valid;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < B; ++b)
      if (t < len[b]) valid.push_back(t * B + b);
  const Tensor idx = at::tensor(valid, at::TensorOptions().dtype(at::kLong));
  d_in = d_in.index_select(0, idx);
  for (Tensor* r : rows) *r = r->index_select(0, idx);
  dx2.zero_();
  dx2.index_copy_(0, idx, at::mm(d_in, w_ih));
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

// The per-step loops read the weights forwards on even steps and backwards on odd ones (gemm_acc's
// reverse; the unit split's blocks and gates in reverse order too): what one step read last, still
// in the core's L2, is read first by the next (a thread's share of W_hh can exceed its L2).
inline bool backwards(int64_t t) { return t % 2 == 1; }
// the i-th of lo .. hi-1 in a step's order
inline int64_t in_step_order(int64_t i, int64_t lo, int64_t hi, bool back) { return back ? lo + hi - 1 - i : i; }

// Whether the batch split multiplies each step's inputs by W_ih inside the loop (with the recurrent
// product, or beside it) rather than the input terms of all steps in one GEMM before it: where I is
// small next to H, or both weights (16 (I + H) H bytes) fit in half a core's L2. Otherwise every
// thread would stream W_ih and W_hh at every step, where one GEMM over all steps reads W_ih once
// (docs/speed.md).
inline bool inputs_per_step(int64_t I, int64_t H) { return 4 * I <= H || 16 * (I + H) * H <= (int64_t(1) << 20); }

// Inference computes the input terms of a chunk of steps at a time: about 2^22 gate values (16 MiB
// in float32) per chunk, so long sequences need no (T, B, 4H) buffer. Each chunk is one
// multi-threaded GEMM that packs W_ih again; chunks of 1 MiB made that a tenth of the call
// (docs/speed.md).
inline int64_t infer_chunk(int64_t T, int64_t BH) {
  return std::max<int64_t>(1, std::min<int64_t>(T, (int64_t(1) << 22) / (4 * BH) + 1));
}

// Parallel over the batch, serial over time: each thread runs the whole time loop for its own
// block of sequences (rows never interact), so there is no fork/join per step. Inside, the
// per-step GEMM runs single-threaded on the thread's rows.
inline int64_t batch_grain(int64_t B) {
  const int64_t n = std::max<int64_t>(1, at::get_num_threads());
  return std::max<int64_t>(1, (B + n - 1) / n);
}

// Whether the backward by sequences keeps every step's gate gradients and forms dx and the weight
// gradients once after the loop (lstm_backward.cpp, layernorm.cpp), rather than step by step. Step
// by step, each thread adds a product of rank (its sequences) to its own partial dW_hh (H x 4H) at
// every step, streaming it through the cache: worth it only for many sequences per thread and a
// small H (docs/speed.md has the measurements).
inline bool defer_weight_grads(int64_t B, int64_t H) {
  const int64_t per_thread = batch_grain(B);
  return per_thread < 16 || (H >= 192 && per_thread <= 32);
}

// Split over units instead of sequences, for few sequences and a large W_hh: with the batch
// split every thread streams all of W_hh (16 H^2 bytes in float32) through its cache every step;
// here each thread multiplies by its own block of W_hh's rows (the four gates of its units) and
// updates those units, at the price of a barrier per step (the next step needs every unit's h).
// PHASEDLSTM_SPLIT=units or =batch forces one of them (for tests and benchmarks); the autotuner
// (phasedlstm/autotune.py) measures both where it is on, this rule being the default it keeps
// unless another is clearly faster.
// packed_infer: the inference forward with the micro-kernel (float32, AVX2 or AVX-512), whose batch
// split multiplies [x_t | h_{t-1}] by packed panels of W.
inline bool split_units(int64_t B, int64_t H, bool packed_infer = false) {
  if (options().split != 0) return options().split == 1;
  const int64_t nt = at::get_num_threads();
  // Where the unit split measured faster than the batch split on 2 cores (docs/speed.md): forward-only
  // from H = 384 at up to 8 sequences per thread and from H = 192 at up to 2; training from H = 512
  // at up to 16, H = 384 at up to 8 and H = 256 at up to 2.
  if (nt <= 1) return false;
  if (packed_infer) return (H >= 384 && B <= 8 * nt) || (H >= 192 && B <= 2 * nt);
  return (H >= 512 && B <= 16 * nt) || (H >= 384 && B <= 8 * nt) || (H >= 256 && B <= 2 * nt);
}

// Whether a backward forms its weight gradients once after the loop, straight into their own
// layouts (the unit split always; the split by sequences where defer_weight_grads says), rather than
// in per-thread partials added up at the end.
inline bool weight_grads_at_end(int64_t B, int64_t H) { return split_units(B, H) || defer_weight_grads(B, H); }

// One parallel region for a whole loop of steps: f(tid, nth, barrier) runs once on each of nth <=
// `want` threads, and barrier() waits until every one of them has reached it. The unit split's
// steps use it so that a step costs a barrier, not a fork/join of the thread team. Serial (nth = 1)
// with one thread or inside another parallel region. f must not throw (nothing here catches it).
template <typename F>
void in_team(int64_t want, const F& f) {
  const int64_t nt = std::min<int64_t>(want, at::get_num_threads());
  if (nt <= 1 || omp_in_parallel()) {
    f(0, 1, [] {});
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    f(omp_get_thread_num(), omp_get_num_threads(), [] {
#pragma omp barrier
    });
  }
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

// Memory that the calls on one thread reuse: the unit split packs all of W_hh at every call, and
// memory of that size freshly allocated is fresh pages, one page fault per 4 KiB written (9% of a
// forward without gradients at (B, T, I, H) = (8, 35, 32, 650)). One buffer per thread, taken for
// the life of its user and given back after (a user while another holds it gets new memory);
// up to kKeepBytes is kept between calls.
class ReusedBuffer {
 public:
  static constexpr int64_t kKeepBytes = int64_t(64) << 20;
  ReusedBuffer(int64_t numel, const at::TensorOptions& opts) {
    Tensor& kept = slot();
    if (kept.defined() && kept.numel() >= numel && kept.dtype() == opts.dtype()) buf_ = std::move(kept);
    else buf_ = at::empty({numel}, opts);
    kept = Tensor();
  }
  ReusedBuffer(const ReusedBuffer&) = delete;
  ReusedBuffer& operator=(const ReusedBuffer&) = delete;
  ~ReusedBuffer() {
    Tensor& kept = slot();
    if (buf_.nbytes() <= kKeepBytes && (!kept.defined() || kept.numel() < buf_.numel())) kept = std::move(buf_);
  }
  Tensor part(int64_t offset, int64_t numel) const { return buf_.narrow(0, offset, numel); }

 private:
  static Tensor& slot() {
    static thread_local Tensor kept;
    return kept;
  }
  Tensor buf_;
};

struct UnitPacks {
  std::unique_ptr<ReusedBuffer> memory;  // where the packs are (declared first: given back after them)
  std::vector<PackedB> p;
  Tensor zeros;  // the starting sums of set()
  int64_t kblock = kUnitKBlock;

  UnitPacks(const Tensor& w_hh, int64_t T, bool backward = false) {
    if (T < 8 || !RecurrentProduct::packable(w_hh, /*transpose=*/true)) return;
    kblock = options().kblock;
    const int64_t H = w_hh.size(1), blk = unit_block(H), nb = (H + blk - 1) / blk, per = backward ? 1 : 4;
    const Tensor W = w_hh.detach().contiguous();
    p.resize(per * nb);
    zeros = at::zeros({blk}, W.options());
    // pack i: K = H (forward) or 4H (backward), N = its block's units
    auto size = [&](int64_t i) { return packed_size(backward ? 4 * H : H, std::min(blk, H - i / per * blk)); };
    std::vector<int64_t> offset(per * nb + 1, 0);
    for (int64_t i = 0; i < per * nb; ++i) offset[i + 1] = offset[i] + size(i);
    memory = std::make_unique<ReusedBuffer>(offset.back(), W.options());
    at::parallel_for(0, per * nb, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t q = i / per, gate = i % per, u0 = q * blk, hb = std::min(blk, H - u0);
        const Tensor dst = memory->part(offset[i], size(i));
        p[i] = backward ? pack_b(W.narrow(1, u0, hb), /*K=*/4 * H, /*N=*/hb, /*sk=*/H, /*sn=*/1, dst)
                        : pack_b(W.narrow(0, gate * H + u0, hb), /*K=*/H, /*N=*/hb, /*sk=*/1, /*sn=*/H, dst);
      }
    });
  }
  bool on() const { return !p.empty(); }
  // out (M rows of stride ldc) += in (M x K, rows of stride lda) times pack i (forward: 4 q + gate;
  // backward: q); with set, out = that product (not read)
  void acc(int64_t i, int64_t M, const float* in, int64_t lda, float* out, int64_t ldc, bool set = false,
           bool reverse = false) const {
    gemm_acc(M, in, lda, p[i], out, ldc, set ? zeros.data_ptr<float>() : nullptr, kblock, reverse);
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

// The matrix products of one backward step on this thread's rows, given the gradients of the
// input term (d_in, wrt x_t W_ih^T) and of the recurrent term (d_rec, wrt h_{t-1} W_hh^T):
//   dh_{t-1} += d_rec W_hh,  dx_t = d_in W_ih,  dW_hh^T += h_{t-1}^T d_rec,  dW_ih^T += x_t^T d_in
// (for the LSTM both are the gate gradients dG).
template <typename scalar_t>
struct StepGrads {
  const RecurrentProduct &rec, &rin;
  const scalar_t *HS, *X;
  int64_t B, H, I, b0, Bt;
  Tensor h_t, x_t;  // scratch: h_{t-1}^T and x_t^T of the rows
  StepGrads(const RecurrentProduct& rec_, const RecurrentProduct& rin_, const scalar_t* HS_, const scalar_t* X_, int64_t B_,
            int64_t H_, int64_t I_, int64_t b0_, int64_t Bt_, const at::TensorOptions& opts)
      : rec(rec_), rin(rin_), HS(HS_), X(X_), B(B_), H(H_), I(I_), b0(b0_), Bt(Bt_),
        h_t(at::empty({H_, Bt_}, opts)), x_t(at::empty({I_, Bt_}, opts)) {}

  // d_in, d_rec: this thread's rows (Bt x 4H); dh_prev (Bt x H) and dx (Bt x I): its rows of step t
  void operator()(int64_t t, const scalar_t* d_in, const scalar_t* d_rec, scalar_t* dh_prev, scalar_t* dx,
                  Tensor& dwhh, Tensor& dwih) {
    rec.acc_rows<scalar_t>(Bt, d_rec, dh_prev);
    zero_row(dx, Bt * I);
    rin.acc_rows<scalar_t>(Bt, d_in, dx);
    scalar_t* ht = h_t.data_ptr<scalar_t>();
    scalar_t* xt = x_t.data_ptr<scalar_t>();
    transpose_into(HS + t * B * H + b0 * H, Bt, H, H, ht);
    acc_ab_rows<scalar_t>(dwhh, H, Bt, ht, d_rec);
    transpose_into(X + (t * B + b0) * I, Bt, I, I, xt);
    acc_ab_rows<scalar_t>(dwih, I, Bt, xt, d_in);
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
    dh_rows(rows, dg, b0, dh_prev);
    const scalar_t* g = dgc.data_ptr<scalar_t>();  // (their dG, gathered by dh_rows)
    scalar_t* dxm = dxc.data_ptr<scalar_t>();
    zero_row(dxm, m * I);
    rin.acc_rows<scalar_t>(m, g, dxm);
    scatter_rows(dxm, rows, b0, I, dx_rows.data_ptr<scalar_t>(), I);
    scalar_t* ht = h_t.data_ptr<scalar_t>();  // h_{t-1}^T of the running rows, (H, m)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < H; ++j) ht[j * m + i] = HS[t * B * H + rows[i] * H + j];
    acc_ab_rows<scalar_t>(dwhh, H, m, ht, g);
    scalar_t* xt = x_t.data_ptr<scalar_t>();
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < I; ++j) xt[j * m + i] = X[(t * B + rows[i]) * I + j];
    acc_ab_rows<scalar_t>(dwih, I, m, xt, g);
  }
  // dh_{t-1} += dG_t W_hh alone (the weight gradients and dx deferred to one product over all steps),
  // on the running rows only; dg_t: step t's gate gradients of the whole batch (global rows)
  void dh_running(const std::vector<int64_t>& rows, const scalar_t* dg_t, scalar_t* dh_prev) {
    if (!rows.empty()) dh_rows(rows, dg_t, 0, dh_prev);
  }

 private:
  // The running rows' dG (row r of dg at r - off) gathered into dgc, and dh_{t-1} += dG W_hh on those
  // rows of dh_prev (all rows of the batch)
  void dh_rows(const std::vector<int64_t>& rows, const scalar_t* dg, int64_t off, scalar_t* dh_prev) {
    const int64_t m = int64_t(rows.size());
    if (!dgc.defined()) {
      dgc = at::empty({Bt, 4 * H}, h_t.options());
      dhc = at::empty({Bt, H}, h_t.options());
      dxc = at::empty({Bt, I}, h_t.options());
    }
    gather_rows(dg, 4 * H, rows, off, 4 * H, dgc.data_ptr<scalar_t>());
    gather_rows(dh_prev, H, rows, 0, H, dhc.data_ptr<scalar_t>());
    rec.acc_rows<scalar_t>(m, dgc.data_ptr<scalar_t>(), dhc.data_ptr<scalar_t>());
    scatter_rows(dhc.data_ptr<scalar_t>(), rows, 0, H, dh_prev, H);
  }
  Tensor dgc, dhc, dxc;  // scratch of the running rows: their dG, dh_{t-1} and dx_t
};

}  // namespace phasedlstm
