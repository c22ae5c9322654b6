// The time gate of all steps, before the loop, and its backward.
#include "time_gate.h"
#include "ops.h"

namespace phasedlstm {

// the gate's loops, as the header's functions: float64 phase arithmetic without -ffast-math
#pragma GCC push_options
#pragma GCC optimize("no-fast-math")

template <typename scalar_t>
void gate_forward_impl(const double* times, int64_t R, const scalar_t* tau, const scalar_t* s, const scalar_t* r_on,
                       double leak, int64_t H, scalar_t* k) {
  const GateUnits u(tau, s, r_on, H);
  at::parallel_for(0, R, std::max<int64_t>(1, 4096 / H), [&](int64_t r0, int64_t r1) {
    std::vector<double> phi(H);
    for (int64_t row = r0; row < r1; ++row) {
      phase_row(times[row], u, phi.data(), H);
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
      phase_row(times[row], u, phi.data(), H);
      d_times[row] = gate_backward_row(times[row], phi.data(), dk + row * H, u, leak, acc, acc + H, acc + 2 * H, H);
    }
  });
}

// The layers' value checks of the time gate's inputs, one pass each (Python words the error when one
// fails). is_finite_bits: -ffast-math folds std::isfinite to true.
// times (R, T) float64, R = B or 1 (timestamps shared by the batch); lengths (B,) or none: 0 where
// every value is finite and each row is non-decreasing over its valid steps (a shared row: over the
// longest sequence's), 1 where a value is not finite (padding included), 2 where a valid step goes
// back in time.
int64_t times_status(const Tensor& times, const c10::optional<Tensor>& lengths) {
  TORCH_CHECK(times.dim() == 2 && times.scalar_type() == at::kDouble, "times_status: times must be (R, T) float64");
  const Tensor t = times.contiguous();
  const int64_t R = t.size(0), T = t.size(1);
  const double* p = t.data_ptr<double>();
  for (int64_t i = 0; i < R * T; ++i)
    if (!is_finite_bits(p[i])) return 1;
  std::vector<int64_t> valid(R, T);
  if (lengths.has_value() && lengths->numel() > 0) {
    const Tensor l = lengths->to(at::kLong).contiguous();
    const int64_t* lp = l.data_ptr<int64_t>();
    TORCH_CHECK(l.numel() == R || R == 1, "times_status: ", l.numel(), " lengths for ", R, " rows of times");
    if (R == 1) valid[0] = std::min(T, *std::max_element(lp, lp + l.numel()));
    else
      for (int64_t r = 0; r < R; ++r) valid[r] = std::min(T, lp[r]);
  }
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 1; j < valid[r]; ++j)
      if (p[r * T + j] < p[r * T + j - 1]) return 2;
  return 0;
}

// Whether every value of every tensor (floating point) is finite.
bool all_finite(at::TensorList tensors) {
  for (const Tensor& x : tensors) {
    const Tensor c = x.contiguous();
    bool ok = true;
    AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "all_finite", [&] {
      const scalar_t* p = c.data_ptr<scalar_t>();
      for (int64_t i = 0; i < c.numel() && ok; ++i) ok = is_finite_bits(p[i]);
    });
    if (!ok) return false;
  }
  return true;
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

}  // namespace phasedlstm
