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
