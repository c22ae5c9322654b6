// phasedlstm_testing::*: the kernels' tuning options and the probes of the tests and the benchmark.

#include "schedule.h"

namespace phasedlstm {

// The micro-kernel's own rate on the calling thread, for the benchmark's reference: C (M x N) +=
// A (M x K) B (K x N), B packed once and small enough for the core's L2, best of `repeats` timed
// calls, in GFLOP/s; 0 where there is no micro-kernel (float64 and CPUs without AVX2 use at::addmm).
double micro_kernel_gflops(int64_t M, int64_t K, int64_t N, int64_t repeats) {
  if (!kHavePacked || M <= 0 || K <= 0 || N <= 0) return 0.0;
  const Tensor a = at::randn({M, K}), w = at::randn({N, K});
  Tensor c = at::zeros({M, N});
  const PackedB b = pack_b(w, K, N, /*sk=*/1, /*sn=*/K);
  double best = std::numeric_limits<double>::infinity();
  for (int64_t r = 0; r < std::max<int64_t>(1, repeats) + 1; ++r) {  // (the first call warms up)
    const auto t0 = std::chrono::steady_clock::now();
    gemm_acc(M, a.data_ptr<float>(), K, b, c.data_ptr<float>(), N);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r > 0) best = std::min(best, s);
  }
  return 2.0 * M * K * N / best / 1e9;
}

// C += A^T B (and, with bias defined, bias += the column sums of B) as a backward computes its
// weight gradients over all steps, in chunks of `chunk` rows of K (0: the default). For the tests
// and the benchmark (options().weight_grads = false: at::addmm_, i.e. MKL).
void weight_grads_acc(Tensor C, const Tensor& A, const Tensor& B, Tensor bias, int64_t chunk) {
  TORCH_CHECK(C.scalar_type() == at::kFloat && A.scalar_type() == at::kFloat && B.scalar_type() == at::kFloat,
              "weight_grads_acc: float32 only");
  TORCH_CHECK(A.dim() == 2 && B.dim() == 2 && C.dim() == 2 && A.size(0) == B.size(0) && C.size(0) == A.size(1) &&
                  C.size(1) == B.size(1),
              "weight_grads_acc: expected A (K, M), B (K, N), C (M, N); got ", A.sizes(), ", ", B.sizes(), ", ", C.sizes());
  std::vector<std::pair<Tensor, Tensor>> parts = {{A, C}};
  if (bias.defined() && bias.numel() > 0) parts.push_back({Tensor(), bias});
  acc_weight_grads<float>(B, parts, chunk);
}

// The tuning options (common.h): set all five, or read them.
void set_options(bool packed, bool weight_grads, bool running_rows, int64_t split, int64_t kblock) {
  TORCH_CHECK(split >= 0 && split <= 2, "set_options: split must be 0 (by shape), 1 (units) or 2 (batch), got ", split);
  TORCH_CHECK(kblock >= 0, "set_options: kblock must be >= 0, got ", kblock);
  options() = Options{packed, weight_grads, running_rows, static_cast<int>(split), kblock};
}

std::tuple<bool, bool, bool, int64_t, int64_t> get_options() {
  const Options& o = options();
  return {o.packed, o.weight_grads, o.running_rows, o.split, o.kblock};
}

}  // namespace phasedlstm

// Not for users: the switches and probes of the tests and the benchmark.
TORCH_LIBRARY(phasedlstm_testing, m) {
  m.def("micro_kernel_gflops(int M, int K, int N, int repeats) -> float", &phasedlstm::micro_kernel_gflops);
  m.def("weight_grads_acc(Tensor(a!) C, Tensor A, Tensor B, Tensor(b!) bias, int chunk) -> ()", &phasedlstm::weight_grads_acc);
  m.def("set_options(bool packed, bool weight_grads, bool running_rows, int split, int kblock) -> ()", &phasedlstm::set_options);
  m.def("get_options() -> (bool, bool, bool, int, int)", &phasedlstm::get_options);
}
