"""The fused native loop equals the reference loop: outputs, final state and every gradient."""

import copy
import os

import pytest
import torch

from phasedlstm import LSTM, LayerNormLSTM, PeepholeLSTM, PhasedLSTM, fast

if os.environ.get("PHASEDLSTM_REQUIRE_EXT") == "1" and not fast.load():  # CI sets it: no silent skip
    raise RuntimeError(f"PHASEDLSTM_REQUIRE_EXT=1 but the fused kernels are unavailable: {fast.unavailable_reason()}")
pytestmark = pytest.mark.skipif(not fast.load(), reason=f"fused kernels unavailable: {fast.unavailable_reason()}")

LAYERS = {"lstm": LSTM, "peephole": PeepholeLSTM, "phased": PhasedLSTM, "layernorm": LayerNormLSTM}
# float32: the two paths sum in different orders and the kernels use vectorised exp/tanh;
# tolerances relative to the size of each tensor (rtol 1e-4, atol 1e-4 x its largest value)
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-11), torch.float32: dict(rtol=1e-4, atol=1e-4)}
# packed (fast.tuning): "1" the register-blocked micro-kernel where it serves (float32 on AVX2 and
# AVX-512 CPUs), "0" at::addmm for every product; float64 always takes at::addmm
DTYPE_PACKED = [(torch.float64, "1"), (torch.float32, "1"), (torch.float32, "0")]


def _pair(kind, dtype, input_size=3, hidden_size=6, **kw):
    if kind == "phased":
        kw = {"r_on": 0.4, "period_init": (0.5, 2.0), **kw}
    ref = LAYERS[kind](input_size, hidden_size, batch_first=True, impl="reference", dtype=dtype, **kw)
    with torch.no_grad():  # non-trivial peepholes, gains and biases
        for name, p in ref.named_parameters():
            if name.startswith(("weight_c", "ln_")):
                p.add_(torch.randn_like(p) * 0.3)
    fst = copy.deepcopy(ref)
    fst.impl = "fast"
    return ref, fst


def _run(m, x, h0, c0, **kw):
    for t in (x, h0, c0):
        t.grad = None
    m.zero_grad()
    out, (h, c) = m(x, (h0, c0), **kw)
    (out.sin().sum() + (h * h).sum() + c.cos().sum()).backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    return {"output": out.detach(), "h_n": h.detach(), "c_n": c.detach(), "d_input": x.grad.clone(),
            "d_h0": h0.grad.clone(), "d_c0": c0.grad.clone(), **grads}


def _assert_same(a, b, dtype):
    assert a.keys() == b.keys()
    for k in a:
        scale = float(a[k].abs().max()) or 1.0
        tol = TOL[dtype]
        torch.testing.assert_close(b[k], a[k], rtol=tol["rtol"], atol=tol["atol"] * scale, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("dtype,packed", DTYPE_PACKED)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_fast_equals_reference(kind, dtype, bidirectional, packed, tune):
    """packed = 0 (PHASEDLSTM_PACKED): every product through at::addmm instead of the register-
    blocked micro-kernel, which serves float32 on AVX2 and AVX-512 CPUs; both paths are tested."""
    tune(packed=packed)
    torch.manual_seed(0)
    ref, fst = _pair(kind, dtype, num_layers=2, bidirectional=bidirectional)
    D = 2 if bidirectional else 1
    x = torch.randn(5, 11, 3, dtype=dtype, requires_grad=True)
    h0 = torch.randn(2 * D, 5, 6, dtype=dtype, requires_grad=True)
    c0 = torch.randn(2 * D, 5, 6, dtype=dtype, requires_grad=True)
    times = torch.rand(5, 11, dtype=torch.float64).mul(0.9).add(0.05).cumsum(1)
    lengths = torch.tensor([11, 4, 7, 1, 11])
    for kw in ({}, {"times": times}, {"lengths": lengths}, {"times": times, "lengths": lengths}):
        a, b = _run(ref, x, h0, c0, **kw), _run(fst, x, h0, c0, **kw)
        if kind == "phased":
            assert {"period_l0", "shift_l0", "r_on_l0", "weight_ci_l1"} <= a.keys()
        _assert_same(a, b, dtype)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_fast_inference_equals_reference(kind):
    """Without gradients the fused loop keeps nothing for backward and works a few steps at a time
    (this shape spans several chunks): the numbers must not change."""
    torch.manual_seed(4)
    ref, fst = _pair(kind, torch.float64, bidirectional=True)
    ref.eval()
    fst.eval()
    x = torch.randn(48, 12, 3, dtype=torch.float64)
    times = torch.rand(48, 12, dtype=torch.float64).cumsum(1)
    lengths = torch.randint(1, 13, (48,))
    big_ref = LAYERS[kind](3, 300, impl="reference", dtype=torch.float64, batch_first=True)
    big_fst = copy.deepcopy(big_ref)
    big_fst.impl = "fast"
    with torch.no_grad():
        for a, b in ((ref, fst), (big_ref, big_fst)):
            for kw in ({}, {"times": times, "lengths": lengths}):
                (o1, (h1, c1)), (o2, (h2, c2)) = a(x, **kw), b(x, **kw)
                for u, v in ((o1, o2), (h1, h2), (c1, c2)):
                    torch.testing.assert_close(v, u, **TOL[torch.float64])


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("packed", ["1", "0"])
def test_inference_gives_the_training_forwards_numbers_bit_for_bit(kind, packed, tune):
    """float32: a model scored without gradients (evaluation, an exported program, which runs the
    training forward's kernel) gives exactly the numbers of the same forward with gradients. Both
    are fused, but inference keeps nothing and runs its own loop; with -ffast-math the compiler
    may round the same row function differently where it is inlined into each (seen: the LN-LSTM,
    up to 6e-6 apart), so the row functions are compiled once."""
    tune(packed=packed)
    for B, T, H in ((7, 23, 8), (2, 3, 8), (5, 61, 24)):
        torch.manual_seed(B)
        m = LAYERS[kind](3, H, num_layers=2, bidirectional=True, batch_first=True, impl="fast").eval()
        if kind == "phased":
            m.sparse_inference = False  # (the sparse path has its own equality tests: tests/test_sparse.py)
        x = torch.randn(B, T, 3) * 3
        lengths = torch.randint(2, T + 1, (B,))
        lengths[0] = T
        kw = {"lengths": lengths, "times": torch.rand(B, T).mul(2).cumsum(1)} if kind == "phased" else {"lengths": lengths}
        with torch.no_grad():
            o1, (h1, c1) = m(x, **kw)
        o2, (h2, c2) = m(x, **kw)
        assert o2.requires_grad
        for u, v in ((o1, o2), (h1, h2), (c1, c2)):
            assert torch.equal(u, v.detach()), f"{kind} (B, T, H) = {(B, T, H)}: {(u - v).abs().max():.3g} apart"


@pytest.mark.parametrize("kind", list(LAYERS))
def test_fast_streaming_equals_one_call(kind):
    torch.manual_seed(1)
    _, fst = _pair(kind, torch.float64, num_layers=2)
    x = torch.randn(3, 12, 3, dtype=torch.float64)
    times = torch.rand(3, 12, dtype=torch.float64).cumsum(1)
    full, (h, c) = fst(x, times=times)
    a, hx = fst(x[:, :5], times=times[:, :5])
    b, (h2, c2) = fst(x[:, 5:], hx, times=times[:, 5:])
    torch.testing.assert_close(torch.cat([a, b], 1), full)
    torch.testing.assert_close(h2, h)
    torch.testing.assert_close(c2, c)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_fast_gradcheck(kind):
    torch.manual_seed(2)
    _, fst = _pair(kind, torch.float64)
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    times = torch.tensor([[0.1, 0.7, 1.3, 2.2], [0.2, 0.5, 0.9, 1.1]], dtype=torch.float64)
    names = [n for n, _ in fst.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in fst.parameters()]

    def f(x, *ps):
        out, (h, c) = torch.func.functional_call(fst, dict(zip(names, ps)), (x,),
                                                 {"times": times, "lengths": torch.tensor([4, 3])})
        return out, h, c

    assert torch.autograd.gradcheck(f, (x, *params))


def test_fast_without_bias_and_peepholes():
    torch.manual_seed(3)
    for kind, kw in (("lstm", {"bias": False}), ("phased", {"peepholes": False}), ("layernorm", {"bias": False})):
        ref, fst = _pair(kind, torch.float64, **kw)
        x = torch.randn(3, 6, 3, dtype=torch.float64, requires_grad=True)
        h0 = torch.zeros(1, 3, 6, dtype=torch.float64, requires_grad=True)
        c0 = torch.zeros(1, 3, 6, dtype=torch.float64, requires_grad=True)
        _assert_same(_run(ref, x, h0, c0), _run(fst, x, h0, c0), torch.float64)


def test_impl_fast_refuses_what_it_cannot_run():
    layer = LSTM(3, 4, impl="fast").to(torch.float16)
    with pytest.raises(RuntimeError, match="impl='fast' was asked for.*float16"):
        layer(torch.randn(5, 2, 3, dtype=torch.float16))
    with pytest.raises(ValueError, match="impl must be one of"):
        LSTM(3, 4, impl="cuda")


def test_auto_takes_fast_path_on_cpu():
    layer = PhasedLSTM(3, 4)
    assert layer._fast_path(torch.randn(5, 2, 3))
    assert not LSTM(3, 4, impl="reference")._fast_path(torch.randn(5, 2, 3))


def test_without_kernels_the_reference_runs_and_says_so_once():
    import subprocess
    import sys

    code = ("import warnings, torch, phasedlstm\n"
            "warnings.simplefilter('always')\n"
            "m = phasedlstm.PhasedLSTM(3, 4)\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    m(torch.randn(5, 2, 3)); m(torch.randn(5, 2, 3))\n"
            "print(sum('fused CPU kernels are not available' in str(x.message) for x in w))\n"
            "print(m._fast_path(torch.randn(5, 2, 3)))\n")
    env = {**__import__("os").environ, "PHASEDLSTM_NO_EXT": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "False"]


@pytest.mark.parametrize("split,B,threads", [("units", 5, 2), ("units", 5, 1), ("batch", 5, 2), ("batch", 40, 2)])
@pytest.mark.parametrize("kind", ["lstm", "peephole", "phased", "layernorm"])
@pytest.mark.parametrize("dtype,packed", DTYPE_PACKED)
def test_both_ways_of_sharing_a_step_among_threads_equal_the_reference(kind, dtype, split, B, threads, packed, tune):
    """A step's work is shared among threads by sequences, or (few sequences and a large W_hh) by
    units: each thread its units' rows of W_hh; PHASEDLSTM_SPLIT forces one. Both give the
    reference's outputs, states and gradients, with the micro-kernel (its unit blocks of W_hh
    packed once per call) and without (PHASEDLSTM_PACKED=0). H = 40 on 2 threads makes unequal
    unit blocks (32 + 8: a full and a partial panel); shared and per-sample timestamps, lengths,
    and 400 steps without gradients (the inference loop works in chunks of steps) are covered.
    By sequences, B = 5 forms the weight gradients once after the loop (few sequences per
    thread) and B = 40 step by step. On one thread the unit split runs every block itself."""
    tune(split=split)
    tune(packed=packed)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(5)
        H = 40
        kw = {"r_on": 0.4, "period_init": (0.5, 2.0)} if kind == "phased" else {}
        ref = LAYERS[kind](3, H, batch_first=True, impl="reference", dtype=dtype, **kw)
        with torch.no_grad():
            for name, p in ref.named_parameters():
                if name.startswith("weight_c"):
                    p.add_(torch.randn_like(p) * 0.3)
        fst = copy.deepcopy(ref)
        fst.impl = "fast"
        x = torch.randn(B, 11, 3, dtype=dtype, requires_grad=True)
        h0 = torch.randn(1, B, H, dtype=dtype, requires_grad=True)
        c0 = torch.randn(1, B, H, dtype=dtype, requires_grad=True)
        times = torch.rand(B, 11, dtype=torch.float64).mul(0.9).add(0.05).cumsum(1)
        lengths = torch.tensor([11, 4, 7, 1, 11] * (B // 5))
        for call in ({}, {"times": times}, {"times": times[:1].expand(B, 11)}, {"lengths": lengths},
                     {"times": times, "lengths": lengths}):
            _assert_same(_run(ref, x, h0, c0, **call), _run(fst, x, h0, c0, **call), dtype)
        fst.eval()
        ref.eval()
        if kind == "phased":
            fst.sparse_inference = False  # (the dense fused loop, not the sparse kernel)
        xl = torch.randn(5, 400, 3, dtype=dtype)
        tl = torch.rand(5, 400, dtype=torch.float64).cumsum(1)
        tol = {"rtol": TOL[dtype]["rtol"], "atol": TOL[dtype]["atol"] * 2}
        if kind == "layernorm" and dtype == torch.float32:
            # over 400 steps this LN-LSTM amplifies float32 rounding: the float32 reference itself ends
            # 8e-4 from the float64 one, the fused path 4e-5 to 3e-4. Both are held to the float64 truth.
            ref = copy.deepcopy(ref).double()
            tol = {"rtol": 1e-2, "atol": 2e-3}
        with torch.no_grad():
            for call in ({}, {"times": tl, "lengths": torch.tensor([400, 3, 399, 200, 1])}):
                (o1, (h1, c1)), (o2, (h2, c2)) = ref(xl.to(ref.weight_ih_l0.dtype), **call), fst(xl, **call)
                for u, v in ((o1, o2), (h1, h2), (c1, c2)):
                    torch.testing.assert_close(v.to(u.dtype), u, **tol)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("H", [3, 5, 13])
@pytest.mark.parametrize("dtype,packed", DTYPE_PACKED)
def test_layer_norm_rows_of_any_length_equal_the_reference(H, dtype, packed, tune):
    """The LN-LSTM's row reductions (sum, largest magnitude, variance; the backward's two sums) run
    by 32 and by 8 values with a scalar tail: rows of 4H = 12, 20, 52 and H = 3, 5, 13 values reach
    every part. Outputs, states and gradients equal the reference's, also where an input row's
    terms exceed 2^40 (the row is scaled before it is normalised) and on 2 threads, where each
    thread multiplies its rows' inputs per step."""
    tune(packed=packed)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(11)
        ref = LayerNormLSTM(3, H, batch_first=True, impl="reference", dtype=dtype)
        fst = copy.deepcopy(ref)
        fst.impl = "fast"
        x = torch.randn(4, 9, 3, dtype=dtype)
        x[1, 2:4] *= 1e13  # input terms beyond 2^40 at two steps of one sequence
        x.requires_grad_(True)
        h0 = torch.randn(1, 4, H, dtype=dtype, requires_grad=True)
        c0 = torch.randn(1, 4, H, dtype=dtype, requires_grad=True)
        for call in ({}, {"lengths": torch.tensor([9, 3, 9, 5])}):
            _assert_same(_run(ref, x, h0, c0, **call), _run(fst, x, h0, c0, **call), dtype)
        with torch.no_grad():
            (o1, (h1, c1)), (o2, (h2, c2)) = ref(x), fst(x)
        for u, v in ((o1, o2), (h1, h2), (c1, c2)):
            torch.testing.assert_close(v, u, **TOL[dtype])
    finally:
        torch.set_num_threads(threads)


def _same_as_reference(kind, seed, B, T, I, H, lengths):
    """A float32 pair (reference, fused) of layers from one seed; outputs, states and every gradient
    of the fused one equal the reference's, without and with ``lengths`` (and, for a Phased LSTM,
    per-sample timestamps). Returns the pair."""
    torch.manual_seed(seed)
    ref, fst = _pair(kind, torch.float32, input_size=I, hidden_size=H)
    x = torch.randn(B, T, I, requires_grad=True)
    h0 = torch.randn(1, B, H, requires_grad=True)
    c0 = torch.randn(1, B, H, requires_grad=True)
    times = torch.rand(B, T, dtype=torch.float64).mul(0.9).add(0.05).cumsum(1)
    for call in ({}, {"lengths": lengths}) + (({"times": times},) if kind == "phased" else ()):
        _assert_same(_run(ref, x, h0, c0, **call), _run(fst, x, h0, c0, **call), torch.float32)
    return ref, fst


def _same_without_gradients(ref, fst, x, **tol):
    """The pair in eval mode (a Phased LSTM's dense fused loop, not sparse inference) on x without
    gradients: outputs, h_n and c_n equal."""
    fst.eval()
    ref.eval()
    if isinstance(fst, PhasedLSTM):
        fst.sparse_inference = False
    with torch.no_grad():
        (o1, (h1, c1)), (o2, (h2, c2)) = ref(x), fst(x)
    for u, v in ((o1, o2), (h1, h2), (c1, c2)):
        torch.testing.assert_close(v, u, **tol)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_batch_split_with_a_wide_input_equals_the_reference(kind, tune):
    """By sequences, the micro-kernel multiplies [x_t | h_{t-1}] by [W_ih | W_hh] in one product per
    step (the LN-LSTM: x_t W_ih^T beside h_{t-1} W_hh^T), except where I is large and the two weights
    together outgrow half a core's L2 (here I = H = 256): then the input terms of all steps are one
    GEMM first and each step multiplies h_{t-1} alone. Outputs, states and gradients equal the
    reference's, with lengths (the running rows only), and 30 steps without gradients."""
    tune(split="batch")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ref, fst = _same_as_reference(kind, 11, 6, 9, 256, 256, torch.tensor([9, 2, 5, 9, 1, 3]))
        _same_without_gradients(ref, fst, torch.randn(6, 30, 256), **TOL[torch.float32])
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_unit_split_weight_gradients_equal_the_reference(kind, tune):
    """With the unit split, the backward forms the weight and bias gradients once over all steps at
    its end (dG^T h_{t-1}, dG^T x and dG's column sums over the valid steps). H = 37 makes a partial
    last panel of 4H = 148 columns in the per-step products; 7 sequences of up to 43 steps, with and
    without lengths. Every gradient equals the reference's."""
    tune(split="units")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _same_as_reference(kind, 9, 7, 43, 5, 37, torch.tensor([43, 5, 20, 43, 1, 42, 30]))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("kind", ["peephole", "layernorm"])
def test_unit_split_packs_in_reused_memory_equal_the_reference(kind, tune):
    """The unit split packs W_hh at every call into memory that the calls of a thread reuse.
    Calls one after another with a larger W_hh, a smaller one, the first layer again after its
    weights changed in place, and the backward's packs between them: each equals the reference
    (no pack of an earlier call or of other weights is read)."""
    tune(split="units")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ref, fst = _same_as_reference(kind, 3, 5, 12, 4, 200, torch.tensor([12, 3, 7, 12, 1]))
        _same_as_reference(kind, 4, 5, 12, 4, 264, torch.tensor([12, 12, 2, 5, 9]))
        _same_without_gradients(*_same_as_reference(kind, 5, 3, 9, 2, 72, torch.tensor([9, 1, 4])),
                                torch.randn(3, 20, 2), rtol=1e-4, atol=1e-4)
        with torch.no_grad():
            for a, b in zip(ref.parameters(), fst.parameters()):
                a.mul_(-0.5)
                b.mul_(-0.5)
        _same_without_gradients(ref, fst, torch.randn(5, 30, 4), rtol=1e-4, atol=1e-4)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("kblock", ["16", None, "0"])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_unit_split_products_by_blocks_of_k_equal_the_reference(kind, kblock, tune):
    """The unit split's packed products run by blocks of K (128 rows by default, PHASEDLSTM_KBLOCK
    sets it, 0 switches it off) with the next block prefetched. 13 sequences (tiles of 6 + 6 + 1
    rows, so the prefetching second tile runs) and H = 200 on 2 threads: unit blocks of 112 + 88
    units (a partial panel), K = 200 forward (128 + 72) and 800 backward; blocks of 16 make every
    panel many blocks. Outputs, states and every gradient equal the reference's, and 40 steps
    without gradients too."""
    tune(split="units")
    if kblock is not None:
        tune(kblock=kblock)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ref, fst = _same_as_reference(kind, 8, 13, 9, 3, 200, torch.tensor([9, 4, 7, 1, 9, 9, 2, 3, 9, 5, 6, 8, 9]))
        _same_without_gradients(ref, fst, torch.randn(13, 40, 3), rtol=1e-4, atol=2e-4)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", ["lstm", "peephole", "phased"])
@pytest.mark.parametrize("dtype,packed", DTYPE_PACKED)
@pytest.mark.parametrize("threads", [1, 2])
def test_products_on_the_running_rows_only_equal_the_reference(kind, dtype, threads, packed, tune):
    """With lengths, once a quarter of a thread's rows have ended, the fused loops multiply only
    the rows still running (forward and backward); lengths from 1 to T in one batch, so every
    step of the loop runs with a different set of rows: outputs, states and every gradient equal
    the reference's. With and without the micro-kernel (PHASEDLSTM_PACKED); on one thread its
    tiles of 6 rows run (13 rows: 6 + 6 + 1)."""
    tune(packed=packed)
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(6)
        ref, fst = _pair(kind, dtype)
        x = torch.randn(13, 40, 3, dtype=dtype, requires_grad=True)
        h0 = torch.randn(1, 13, 6, dtype=dtype, requires_grad=True)
        c0 = torch.randn(1, 13, 6, dtype=dtype, requires_grad=True)
        lengths = torch.tensor([40, 1, 17, 3, 40, 25, 2, 9, 33, 5, 12, 38, 7])
        times = torch.rand(13, 40, dtype=torch.float64).mul(0.9).add(0.05).cumsum(1)
        for call in ({"lengths": lengths}, {"lengths": lengths, "times": times}):
            _assert_same(_run(ref, x, h0, c0, **call), _run(fst, x, h0, c0, **call), dtype)
    finally:
        torch.set_num_threads(prev)


def test_one_pass_value_checks_equal_the_tensor_checks(monkeypatch):
    """The kernels' one-pass checks of timestamps (finite; non-decreasing within each sequence's valid
    steps, a shared row within the longest one's) and of time parameters (finite) decide as the
    tensor operations that word the errors do, over random cases with NaN, ±inf, steps back in the
    valid part and in the padding, per-sample and shared rows, with and without lengths."""
    from phasedlstm import _checks

    assert fast.load()
    gen = torch.Generator().manual_seed(0)

    def verdicts(times, lengths, params):
        out = []
        for check in (lambda: _checks._check_times_values(times, lengths),
                      lambda: _checks.check_time_parameters(params, lambda q: "tau")):
            try:
                check()
                out.append(None)
            except ValueError as e:
                out.append(str(e))
        return out

    seen = set()
    for case in range(300):
        R, T = (1 if case % 3 == 0 else 4), int(torch.randint(1, 9, (1,), generator=gen))
        times = torch.rand(R, T, generator=gen, dtype=torch.float64).cumsum(1)
        lengths = torch.randint(1, T + 1, (4,), generator=gen) if case % 2 else None
        kind = case % 5
        r, t = int(torch.randint(0, R, (1,), generator=gen)), int(torch.randint(0, T, (1,), generator=gen))
        if kind == 1:
            times[r, t] = [float("nan"), float("inf"), -float("inf")][case % 3]
        elif kind == 2:
            times[r, t] -= 2.0  # back in time (in the valid part or the padding)
        params = [torch.rand(5, generator=gen) + 0.5 for _ in range(3)]
        if kind == 3:
            params[case % 3][int(torch.randint(0, 5, (1,), generator=gen))] = float("nan")
        with monkeypatch.context() as m:
            m.setattr(_checks, "_kernel_checks", lambda: None)
            want = verdicts(times, lengths, params)
        got = verdicts(times, lengths, params)
        assert got == want, (case, times, lengths)
        seen.update(i for i, v in enumerate(want) if v is not None)
        seen.add("ok" if want == [None, None] else "refused")
    assert seen == {0, 1, "ok", "refused"}


@pytest.mark.parametrize("kind", list(LAYERS) + ["batchnorm"])
def test_buffers_on_pooled_blocks_give_the_numbers_of_fresh_memory(kind):
    """The large buffers of a call (kept for the backward, the backward's scratch) on blocks freed by
    earlier calls: training steps of decreasing and increasing lengths (a block serves any request of
    half its size or more), with and without lengths, give bit for bit the numbers the same steps
    give with the pool off, and the pool keeps no more than it is allowed."""
    from phasedlstm import BatchNormLSTM

    def steps(pool_mib):
        torch.manual_seed(0)
        layer = BatchNormLSTM(8, 96) if kind == "batchnorm" else LAYERS[kind](8, 96)
        got = []
        with fast.tuning(pool_mib=pool_mib):
            for T, lengths in ((400, None), (260, torch.tensor([260, 100, 7, 260, 3, 60, 200, 260])), (300, None),
                               (420, torch.tensor([420, 1, 420, 5, 400, 9, 30, 420]))):
                x = torch.randn(T, 8, 8, requires_grad=True)  # (a (T, 8, 4H) float32 buffer: over 1 MiB)
                out, (h, c) = layer(x, lengths=lengths)
                grads = torch.autograd.grad(out.sin().sum() + h.sum() + c.sum(), [x, *layer.parameters()])
                got.append([out.detach(), h.detach(), c.detach(), *grads])
            held = torch.ops.phasedlstm_testing.pool_held()
        return got, held

    pooled, held = steps(64)
    fresh, held_off = steps(0)
    assert 0 < held <= 64 << 20 and held_off == 0
    for a, b in zip(pooled, fresh):
        for u, v in zip(a, b):
            assert torch.equal(u, v)
    _, held_small = steps(2)  # (room for one of the smaller blocks at most)
    assert held_small <= 2 << 20
