// The operators phasedlstm_fused::* (what phasedlstm/fast.py calls), and the forwards for graphs.

#include "ops.h"

namespace phasedlstm {

// The same forwards for graphs (torch.compile, torch.export): no output aliases another (eager
// returns the output as a view of the saved states, and in inference h_n as the state buffer
// itself, to save memory; a compiler that may reuse one output's buffer must never see that).
// Outputs as lstm_forward / ln_forward (always 6 / 10 of them); what inference does not keep is empty.
// Copies the first `outputs` results (what the caller sees) wherever they share memory with another.
std::vector<Tensor> unalias(std::vector<Tensor> r, size_t outputs) {
  for (size_t j = 0; j < outputs; ++j)
    for (size_t i = 0; i < r.size(); ++i)
      if (i != j && r[i].numel() && r[j].numel() && r[j].is_alias_of(r[i])) {
        r[j] = r[j].clone();
        break;
      }
  return r;
}

std::vector<Tensor> lstm_forward_graph(const Tensor& x, const Tensor& w_ih, const OptTensor& bias_opt,
                                       const Tensor& w_hh, const Tensor& h0, const Tensor& c0,
                                       const OptTensor& peep_opt, const OptTensor& k_opt,
                                       const OptTensor& lengths_opt, bool save) {
  const Tensor bias = or_empty(bias_opt, x.options());
  const Tensor peep = or_empty(peep_opt, x.options());
  const Tensor k = or_empty(k_opt, x.options());
  const Tensor lengths = or_empty(lengths_opt, x.options().dtype(at::kLong));
  auto r = lstm_forward(x, w_ih, bias, w_hh, h0, c0, peep, k, lengths, save);
  if (!save) {  // h_n, c_n are the state buffers themselves: drop those from the saved slots
    r[4] = at::empty({0}, r[4].options());
    r[5] = at::empty({0}, r[5].options());
  }
  return unalias(r, 3);
}

std::vector<Tensor> ln_forward_graph(const Tensor& x, const Tensor& w_ih, const Tensor& g_ih,
                                     const OptTensor& b_ih_opt, const Tensor& w_hh, const Tensor& h0,
                                     const Tensor& c0, const Tensor& g_hh, const OptTensor& b_hh_opt,
                                     const Tensor& g_c, const OptTensor& b_c_opt, const OptTensor& lengths_opt,
                                     bool save) {
  const Tensor b_ih = or_empty(b_ih_opt, x.options());
  const Tensor b_hh = or_empty(b_hh_opt, x.options());
  const Tensor b_c = or_empty(b_c_opt, x.options());
  const Tensor lengths = or_empty(lengths_opt, x.options().dtype(at::kLong));
  auto r = ln_forward(x, w_ih, g_ih, b_ih, w_hh, h0, c0, g_hh, b_hh, g_c, b_c, lengths, save);
  if (!save) {  // inference keeps nothing: the same 10 slots as training, empty
    while (r.size() < 10) r.push_back(at::empty({0}, x.options()));
  }
  return unalias(r, 3);
}

}  // namespace phasedlstm

using namespace phasedlstm;

TORCH_LIBRARY(phasedlstm_fused, m) {
  m.def("time_gate_forward(Tensor times, Tensor tau, Tensor s, Tensor r_on, float leak) -> Tensor");
  m.def("time_gate_backward(Tensor dk, Tensor times, Tensor tau, Tensor s, Tensor r_on, float leak) -> Tensor[]");
  m.def("times_status(Tensor times, Tensor? lengths) -> int");
  m.def("all_finite(Tensor[] tensors) -> bool");
  m.def("lstm_forward(Tensor x, Tensor w_ih, Tensor? bias, Tensor w_hh, Tensor h0, Tensor c0, Tensor? peep, Tensor? k, "
        "Tensor? lengths, bool save) -> Tensor[]");
  m.def("lstm_backward(Tensor? grad_out, Tensor? grad_hn, Tensor? grad_cn, Tensor x, Tensor w_ih, Tensor w_hh, "
        "Tensor? peep, Tensor? k, Tensor? lengths, Tensor acts, Tensor hs, Tensor cs) -> Tensor[]");
  m.def("ln_forward(Tensor x, Tensor w_ih, Tensor g_ih, Tensor? b_ih, Tensor w_hh, Tensor h0, Tensor c0, "
        "Tensor g_hh, Tensor? b_hh, Tensor g_c, Tensor? b_c, Tensor? lengths, bool save) -> Tensor[]");
  m.def("lstm_forward_graph(Tensor x, Tensor w_ih, Tensor? bias, Tensor w_hh, Tensor h0, Tensor c0, Tensor? peep, "
        "Tensor? k, Tensor? lengths, bool save) -> Tensor[]");
  m.def("ln_forward_graph(Tensor x, Tensor w_ih, Tensor g_ih, Tensor? b_ih, Tensor w_hh, Tensor h0, Tensor c0, "
        "Tensor g_hh, Tensor? b_hh, Tensor g_c, Tensor? b_c, Tensor? lengths, bool save) -> Tensor[]");
  m.def("infer_forward(Tensor x, Tensor? times, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
        "Tensor? b_hh, Tensor? w_ci, Tensor? w_cf, Tensor? w_co, Tensor? tau, Tensor? s, Tensor? r_on, float leak, "
        "Tensor? lengths, bool sparse, float[] bounds) -> (Tensor[], int, int)");
  m.def("bn_forward(Tensor wx, Tensor w_hh, Tensor g_ih, Tensor? b_ih, Tensor g_hh, Tensor? b_hh, Tensor g_c, "
        "Tensor? b_c, Tensor h0, Tensor c0, Tensor? lengths, Tensor? population, float eps, bool save) -> Tensor[]");
  m.def("bn_backward(Tensor? grad_out, Tensor? grad_hn, Tensor? grad_cn, Tensor w_hh, Tensor g_ih, Tensor g_hh, "
        "Tensor g_c, Tensor? lengths, bool batch, Tensor xn, Tensor zn, Tensor kept, Tensor rstd, Tensor hs, "
        "Tensor cs, Tensor n) -> Tensor[]");
  m.def("ln_backward(Tensor? grad_out, Tensor? grad_hn, Tensor? grad_cn, Tensor x, Tensor w_ih, Tensor g_ih, "
        "Tensor? b_ih, Tensor w_hh, Tensor g_hh, Tensor? b_hh, Tensor g_c, Tensor? b_c, Tensor? lengths, "
        "Tensor rih, Tensor zhh, Tensor rhh, Tensor zc, Tensor rc, Tensor hs, Tensor cs) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(phasedlstm_fused, CPU, m) {
  m.impl("time_gate_forward", &time_gate_forward);
  m.impl("time_gate_backward", &time_gate_backward);
  m.impl("times_status", &times_status);
  m.impl("all_finite", &all_finite);
  m.impl("lstm_forward", &lstm_forward);
  m.impl("lstm_backward", &lstm_backward);
  m.impl("ln_forward", &ln_forward);
  m.impl("ln_backward", &ln_backward);
  m.impl("lstm_forward_graph", &lstm_forward_graph);
  m.impl("ln_forward_graph", &ln_forward_graph);
  m.impl("infer_forward", &infer_forward);
  m.impl("bn_forward", &bn_forward);
  m.impl("bn_backward", &bn_backward);
}
