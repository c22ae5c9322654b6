// Shared by every kernel file: the includes, the tuning options, the activations that stay exact
// over the whole float range, and the element-wise rows of the LSTM, peephole LSTM and Phased LSTM.
//
// The kernels (one file per concern, compiled as one extension by phasedlstm/fast.py):
//   gemm.h          the register-blocked GEMM micro-kernel and the weight-gradient product
//   schedule.h      how a step's work is shared among threads (batch or unit split, running rows)
//   lstm_forward.cpp, lstm_backward.cpp   the LSTM, peephole LSTM and Phased LSTM over all steps
//   layernorm.cpp   the layer-normalised LSTM, forward and backward
//   batchnorm.cpp   the batch-normalised LSTM, forward and backward (a step shared by units)
//   time_gate.h, time_gate.cpp            the Phased LSTM's time gate of all steps
//   infer.cpp       inference without gradients (the time gate inline; sparse at evaluation)
//   register.cpp    the operators phasedlstm_fused::* and their graph variants
//   testing.cpp     phasedlstm_testing::*: the tuning options and the benchmark's and tests' probes
//
// The fused CPU loop of the LSTM family, forward and hand-written backward:
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

#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <type_traits>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__SSE__)
#include <xmmintrin.h>
#endif
#include <vector>

using at::Tensor;

namespace phasedlstm {

// The kernels' tuning switches. The defaults are the strategies docs/speed.md describes; tests and
// benchmarks change them through phasedlstm_testing::set_options (phasedlstm.fast.tuning in Python).
// Read once from the environment when first used: PHASEDLSTM_PACKED=0, PHASEDLSTM_RUNNING_ROWS=0,
// PHASEDLSTM_SPLIT=units|batch, PHASEDLSTM_KBLOCK=N, PHASEDLSTM_FLUSH_DENORMALS=0,
// PHASEDLSTM_POOL_MIB=N (0: no pool).
struct Options {
  bool packed = true;        // the register-blocked micro-kernel where it serves (false: at::addmm)
  bool running_rows = true;  // with lengths, multiply only the sequences still running
  int split = 0;             // how a step is shared among threads: 0 by shape, 1 units, 2 batch
  int64_t kblock = 128;      // the unit split's products by blocks of this many rows of K (0: whole)
  bool flush_denormals = true;  // the backward flushes denormal floats to zero (FlushDenormals)
  int64_t pool_mib = 1024;      // the most memory BlockPool keeps between calls, MiB (0: none)
};

inline Options options_from_env() {
  Options o;
  const auto off = [](const char* name) {
    const char* e = std::getenv(name);
    return e != nullptr && std::strcmp(e, "0") == 0;
  };
  o.packed = !off("PHASEDLSTM_PACKED");
  o.running_rows = !off("PHASEDLSTM_RUNNING_ROWS");
  if (const char* e = std::getenv("PHASEDLSTM_SPLIT")) o.split = std::strcmp(e, "units") == 0 ? 1 : std::strcmp(e, "batch") == 0 ? 2 : 0;
  if (const char* e = std::getenv("PHASEDLSTM_KBLOCK")) o.kblock = std::max<int64_t>(0, std::atoll(e));
  o.flush_denormals = !off("PHASEDLSTM_FLUSH_DENORMALS");
  if (const char* e = std::getenv("PHASEDLSTM_POOL_MIB")) o.pool_mib = std::max<int64_t>(0, std::atoll(e));
  return o;
}

// The options in force (one instance for the whole library).
inline Options& options() {
  static Options o = options_from_env();
  return o;
}

// The large buffers of a call (what the forward keeps for the backward, the backward's per-step
// gradients of all steps) come from here and go back here when their tensors are freed. malloc
// serves blocks this large by mmap and returns them to the system at free (or trims the heap),
// so a call would touch fresh pages: a page fault per 4 KiB, each zeroing its page (how many per
// call depends on malloc's history in the process: scripts/bench_pool.py). A training loop asks for the same
// sizes call after call: a freed block serves the next request of at most its size and at least
// half of it. Up to options().pool_mib MiB are kept; beyond, a freed block goes back to malloc.
// Only for buffers that stay inside the library (saved for the backward, scratch): a tensor on a
// pooled block cannot be resized.
class BlockPool {
 public:
  static constexpr size_t kMinBytes = size_t(1) << 20;  // smaller buffers come from malloc's heap

  static BlockPool& get() {
    static BlockPool* pool = new BlockPool();  // (never destroyed: tensors may be freed at exit)
    return *pool;
  }
  // A block of at least `bytes`, and its size
  std::pair<void*, size_t> take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= 2 * bytes) {
        const auto got = *it;
        free_.erase(it);
        held_ -= got.first;
        return {got.second, got.first};
      }
    }
    const size_t size = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, size);
    TORCH_CHECK(p != nullptr, "phasedlstm: out of memory allocating ", size, " bytes");
    return {p, size};
  }
  void give(void* p, size_t size) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (held_ + size <= size_t(std::max<int64_t>(0, options().pool_mib)) << 20) {
        free_.emplace(size, p);
        held_ += size;
        return;
      }
    }
    std::free(p);
  }
  size_t held() {
    std::lock_guard<std::mutex> lock(mu_);
    return held_;
  }
  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [size, p] : free_) std::free(p);
    free_.clear();
    held_ = 0;
  }

 private:
  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  size_t held_ = 0;
};

// at::empty for a buffer that stays inside the library, on a pooled block where it is large (BlockPool)
inline Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  const size_t bytes = size_t(numel) * opts.dtype().itemsize();
  if (bytes < BlockPool::kMinBytes || options().pool_mib <= 0 || opts.device().type() != at::kCPU)
    return at::empty(sizes, opts);
  const auto [p, size] = BlockPool::get().take(bytes);
  return at::from_blob(p, sizes, [size = size](void* q) { BlockPool::get().give(q, size); }, opts);
}

inline Tensor pooled_zeros(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  return pooled_empty(sizes, opts).zero_();
}

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
inline T tanh_exact(T x) {
  const T t = std::tanh(clamp_to(x, T(20)));
  return is_nan_bits(x) ? x : t;
}

inline bool has_values(const Tensor& t) { return t.defined() && t.numel() > 0; }

// Calls f(peep_flag, phased_flag) with std::true_type or std::false_type for each flag, so that a
// loop templated on them is compiled for every combination and chosen at run time.
template <typename F>
inline void with_flags(bool peephole, bool phased, F&& f) {
  using Y = std::true_type;
  using N = std::false_type;
  if (phased && peephole) f(Y{}, Y{});
  else if (phased) f(N{}, Y{});
  else if (peephole) f(Y{}, N{});
  else f(N{}, N{});
}

// An optional argument of an operator (Tensor? in its schema).
using OptTensor = c10::optional<Tensor>;

// An optional argument inside the kernels: the tensor, or an
// empty one (which has_values() tells apart) where it was not given.
inline Tensor or_empty(const OptTensor& t, at::TensorOptions opts) {
  return t.has_value() && t->defined() ? *t : at::empty({0}, opts);
}

inline int64_t grain_for(int64_t H) { return std::max<int64_t>(1, 2048 / std::max<int64_t>(H, 1)); }

// ---------------------------------------------------------------------------------------------
// Element-wise rows of the LSTM, peephole LSTM and Phased LSTM
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
    const scalar_t i = sigm(ai), f = sigm(af), g = tanh_exact(gg[j]);
    const scalar_t c = f * c_prev + i * g;  // c~_t for the Phased LSTM
    if (PEEP) ao += wco[j] * c;
    const scalar_t o = sigm(ao);
    const scalar_t h = o * tanh_exact(c);
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
static inline void ended_row(const scalar_t* __restrict hp, const scalar_t* __restrict cp, scalar_t* __restrict hn,
                            scalar_t* __restrict cn, scalar_t* __restrict ob, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    hn[j] = hp[j];
    cn[j] = cp[j];
    ob[j] = 0;
  }
}

// Denormal floats (below 1.2e-38 in float32, 2.2e-308 in float64) make x86 arithmetic many times
// slower. A backward over many steps whose gradient enters at the last step only (a last-step
// readout, a loss on h_n) shrinks it step after step into them (docs/speed.md). While a
// FlushDenormals lives, every thread of the pool flushes denormal results and operands to zero (FTZ
// and DAZ in MXCSR); its end restores each thread's own setting. What changes: values below those
// bounds become 0, and so do their products with anything, however large (a weight gradient
// dG^T x with |x| ~ 1e36 loses the dG that were denormal). Options::flush_denormals = false
// (PHASEDLSTM_FLUSH_DENORMALS=0) keeps them.
class FlushDenormals {
 public:
  FlushDenormals() : on_(options().flush_denormals) {
    if (on_) apply(true);
  }
  ~FlushDenormals() {
    if (on_) apply(false);
  }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
  const bool on_;

  static void apply(bool on) {
#if defined(__SSE__)
    constexpr unsigned kBits = 0x8040;  // FTZ (bit 15) | DAZ (bit 6)
    auto set = [on] {  // once per thread and region: at::parallel_for gives each thread one chunk
      thread_local unsigned saved = 0;
      if (on) {
        saved = _mm_getcsr();
        _mm_setcsr(saved | kBits);
      } else {
        _mm_setcsr((_mm_getcsr() & ~kBits) | (saved & kBits));
      }
    };
    if (at::in_parallel_region() || at::get_num_threads() == 1) {
      set();
      return;
    }
    at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) { set(); });
#else
    (void)on;
#endif
  }
};

}  // namespace phasedlstm
