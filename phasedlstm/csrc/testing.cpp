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

// The tuning options (common.h): set all six, or read them.
void set_options(bool packed, bool running_rows, int64_t split, int64_t kblock, bool flush_denormals, int64_t pool_mib) {
  TORCH_CHECK(split >= 0 && split <= 2, "set_options: split must be 0 (by shape), 1 (units) or 2 (batch), got ", split);
  TORCH_CHECK(kblock >= 0, "set_options: kblock must be >= 0, got ", kblock);
  TORCH_CHECK(pool_mib >= 0, "set_options: pool_mib must be >= 0, got ", pool_mib);
  options() = Options{packed, running_rows, static_cast<int>(split), kblock, flush_denormals, pool_mib};
  if (pool_mib == 0) BlockPool::get().clear();
}

std::tuple<bool, bool, int64_t, int64_t, bool, int64_t> get_options() {
  const Options& o = options();
  return {o.packed, o.running_rows, o.split, o.kblock, o.flush_denormals, o.pool_mib};
}

// The bytes BlockPool keeps now (freed blocks waiting for the next call)
int64_t pool_held() { return static_cast<int64_t>(BlockPool::get().held()); }

}  // namespace phasedlstm

// Not for users: the switches and probes of the tests and the benchmark.
TORCH_LIBRARY(phasedlstm_testing, m) {
  m.def("micro_kernel_gflops(int M, int K, int N, int repeats) -> float", &phasedlstm::micro_kernel_gflops);
  m.def("set_options(bool packed, bool running_rows, int split, int kblock, bool flush_denormals, int pool_mib) -> ()",
        &phasedlstm::set_options);
  m.def("get_options() -> (bool, bool, int, int, bool, int)", &phasedlstm::get_options);
  m.def("pool_held() -> int", &phasedlstm::pool_held);
}
