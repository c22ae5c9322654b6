// The kernels' entry points, one per operator.
#pragma once

#include "common.h"

namespace phasedlstm {

// The operators' implementations (registered in register.cpp). Layouts: see common.h.
std::vector<Tensor> lstm_forward(const Tensor& x, const Tensor& w_ih, const Tensor& bias, const Tensor& w_hh,
                                 const Tensor& h0, const Tensor& c0, const Tensor& peep, const Tensor& k,
                                 const Tensor& lengths, bool save);
std::vector<Tensor> lstm_backward(const Tensor& grad_out, const Tensor& grad_hn, const Tensor& grad_cn,
                                  const Tensor& x, const Tensor& w_ih, const Tensor& w_hh, const Tensor& peep,
                                  const Tensor& k, const Tensor& lengths, const Tensor& acts, const Tensor& hs,
                                  const Tensor& cs);
std::vector<Tensor> ln_forward(const Tensor& x, const Tensor& w_ih, const Tensor& g_ih, const Tensor& b_ih,
                               const Tensor& w_hh, const Tensor& h0, const Tensor& c0, const Tensor& g_hh,
                               const Tensor& b_hh, const Tensor& g_c, const Tensor& b_c, const Tensor& lengths,
                               bool save);
std::vector<Tensor> ln_backward(const Tensor& grad_out, const Tensor& grad_hn, const Tensor& grad_cn,
                                const Tensor& x, const Tensor& w_ih, const Tensor& g_ih, const Tensor& b_ih,
                                const Tensor& w_hh, const Tensor& g_hh, const Tensor& b_hh, const Tensor& g_c,
                                const Tensor& b_c, const Tensor& lengths, const Tensor& rih,
                                const Tensor& zhh, const Tensor& rhh, const Tensor& zc, const Tensor& rc,
                                const Tensor& hs, const Tensor& cs);
Tensor time_gate_forward(const Tensor& times, const Tensor& tau, const Tensor& s, const Tensor& r_on, double leak);
std::vector<Tensor> time_gate_backward(const Tensor& dk, const Tensor& times, const Tensor& tau, const Tensor& s,
                                       const Tensor& r_on, double leak);
std::tuple<std::vector<Tensor>, int64_t, int64_t> infer_forward(
    const Tensor& x, const Tensor& times, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& b_ih, const Tensor& b_hh, const Tensor& w_ci, const Tensor& w_cf, const Tensor& w_co,
    const Tensor& tau, const Tensor& s, const Tensor& r_on, double leak, const Tensor& lengths, bool sparse,
    at::ArrayRef<double> bounds);

}  // namespace phasedlstm
