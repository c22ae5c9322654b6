// The kernels' entry points, one per operator.
#pragma once

#include "common.h"

namespace phasedlstm {

// The operators' implementations (registered in register.cpp). Layouts: see common.h.
std::vector<Tensor> lstm_forward(const Tensor& x, const Tensor& w_ih, const OptTensor& bias_opt, const Tensor& w_hh,
                                 const Tensor& h0, const Tensor& c0, const OptTensor& peep_opt,
                                 const OptTensor& k_opt, const OptTensor& lengths_opt, bool save);
std::vector<Tensor> lstm_backward(const OptTensor& grad_out_opt, const OptTensor& grad_hn_opt,
                                  const OptTensor& grad_cn_opt, const Tensor& x, const Tensor& w_ih,
                                  const Tensor& w_hh, const OptTensor& peep_opt, const OptTensor& k_opt,
                                  const OptTensor& lengths_opt, const Tensor& acts, const Tensor& hs,
                                  const Tensor& cs);
std::vector<Tensor> ln_forward(const Tensor& x, const Tensor& w_ih, const Tensor& g_ih, const OptTensor& b_ih_opt,
                               const Tensor& w_hh, const Tensor& h0, const Tensor& c0, const Tensor& g_hh,
                               const OptTensor& b_hh_opt, const Tensor& g_c, const OptTensor& b_c_opt,
                               const OptTensor& lengths_opt, bool save);
std::vector<Tensor> ln_backward(const OptTensor& grad_out_opt, const OptTensor& grad_hn_opt,
                                const OptTensor& grad_cn_opt, const Tensor& x, const Tensor& w_ih,
                                const Tensor& g_ih, const OptTensor& b_ih_opt, const Tensor& w_hh,
                                const Tensor& g_hh, const OptTensor& b_hh_opt, const Tensor& g_c,
                                const OptTensor& b_c_opt, const OptTensor& lengths_opt, const Tensor& rih,
                                const Tensor& zhh, const Tensor& rhh, const Tensor& zc, const Tensor& rc,
                                const Tensor& hs, const Tensor& cs);
std::vector<Tensor> bn_forward(const Tensor& wx, const Tensor& w_hh, const Tensor& g_ih, const OptTensor& b_ih_opt,
                               const Tensor& g_hh, const OptTensor& b_hh_opt, const Tensor& g_c,
                               const OptTensor& b_c_opt, const Tensor& h0, const Tensor& c0,
                               const OptTensor& lengths_opt, const OptTensor& population_opt, double eps, bool save);
std::vector<Tensor> bn_backward(const OptTensor& grad_out_opt, const OptTensor& grad_hn_opt,
                                const OptTensor& grad_cn_opt, const Tensor& w_hh, const Tensor& g_ih,
                                const Tensor& g_hh, const Tensor& g_c, const OptTensor& lengths_opt, bool batch,
                                const Tensor& xn, const Tensor& zn, const Tensor& kept, const Tensor& rstd,
                                const Tensor& hs, const Tensor& cs, const Tensor& n);
Tensor time_gate_forward(const Tensor& times, const Tensor& tau, const Tensor& s, const Tensor& r_on, double leak);
int64_t times_status(const Tensor& times, const c10::optional<Tensor>& lengths);
bool all_finite(at::TensorList tensors);
std::vector<Tensor> time_gate_backward(const Tensor& dk, const Tensor& times, const Tensor& tau, const Tensor& s,
                                       const Tensor& r_on, double leak);
std::tuple<std::vector<Tensor>, int64_t, int64_t> infer_forward(
    const Tensor& x, const OptTensor& times_opt, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& b_ih_opt, const OptTensor& b_hh_opt, const OptTensor& w_ci_opt,
    const OptTensor& w_cf_opt, const OptTensor& w_co_opt, const OptTensor& tau_opt, const OptTensor& s_opt,
    const OptTensor& r_on_opt, double leak, const OptTensor& lengths_opt, bool sparse, at::ArrayRef<double> bounds);

}  // namespace phasedlstm
