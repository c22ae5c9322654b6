"""Autotuning a plain LSTM's path: torch's own LSTM on the same parameters is a candidate beside
the layer's own path; every candidate gives the reference's numbers (outputs and gradients), the
choice is cached per shape class, in memory and (where it won by the margin) on disk, and it can be
turned off."""

import copy
import json

import pytest
import torch

from phasedlstm import LSTM, PhasedLSTM, autotune, paths


@pytest.fixture
def tuner(tmp_path, monkeypatch):
    monkeypatch.setattr(autotune, "choices_file", lambda: tmp_path / "choices.json")
    monkeypatch.setattr(autotune, "_choices", None)
    autotune.enable(True)
    yield
    autotune.enable(False)


def _grads(m, x, **kw):
    x = x.clone().requires_grad_()
    m.zero_grad()
    out, (h, c) = m(x, **kw)
    (out.pow(2).sum() + h.sum() + c.sum()).backward()
    return [out.detach(), h.detach(), c.detach(), x.grad] + [p.grad for p in m.parameters()]


@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2, bidirectional=True), dict(proj_size=3),
                                dict(num_layers=3, bidirectional=True, proj_size=3, bias=False),
                                dict(batch_first=True, learn_initial_state=True, dropout=0.0)],
                         ids=["plain", "2-layer bidirectional", "projection", "3-layer bidirectional projection",
                              "batch_first, learnt h0"])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("stack", [False, True], ids=["per layer", "whole stack"])
def test_torch_path_equals_the_reference(kw, with_lengths, stack):
    torch.manual_seed(0)
    ref = LSTM(4, 6, impl="reference", dtype=torch.float64, **kw)
    fst = copy.deepcopy(ref)
    fst.impl = "auto"
    x = torch.randn(5, 7, 4, dtype=torch.float64) if kw.get("batch_first") else torch.randn(7, 5, 4, dtype=torch.float64)
    call = {"lengths": torch.tensor([7, 3, 5, 1, 7])} if with_lengths else {}
    run = paths.torch_lstm.run_stack if stack else paths.torch_lstm.run
    object.__setattr__(fst, "_path", lambda steps, h0, c0: run)
    for a, b in zip(_grads(ref, x, **call), _grads(fst, x, **call)):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11)


def test_the_choice_is_measured_once_per_shape_class_and_kept_on_disk(tuner, monkeypatch):
    """A clock under which torch's LSTM is faster for batches of up to 8 and slower above: each class
    gets its own choice, measured once; a new process reads back the choice that won by the margin and
    measures the class whose candidates were alike again."""
    used_torch, timed = [False], []
    real_run = paths.torch_lstm.run_stack

    def torch_run(layer, steps, h0, c0):
        used_torch[0] = steps.x.shape[1]
        return real_run(layer, steps, h0, c0)

    torch_run.whole_stack = True

    def clock(fn):
        used_torch[0] = 0
        fn()
        B = used_torch[0]  # 0: the layer's own path ran
        timed.append(B)
        return 1.5 if not B else (1.0 if B <= 8 else 2.0)

    monkeypatch.setattr(paths.torch_lstm, "run_stack", torch_run)
    monkeypatch.setattr(autotune, "timer", clock)
    m = LSTM(3, 5)
    with torch.no_grad():
        for x in (torch.randn(4, 8, 3), torch.randn(4, 8, 3), torch.randn(4, 32, 3), torch.randn(4, 32, 3)):
            m(x)
    choices = autotune.choices()
    assert len(choices) == 2 and len(timed) == 2 * 4 * 6  # two classes, each timed once (4 candidates x 6 runs)
    assert [v for k, v in choices.items() if " B8 " in k] == ["torch"]  # 1.0 against the rule's 1.5: by the margin
    assert [v for k, v in choices.items() if " B32 " in k] == ["rule"]  # the kernels' three paths alike: the rule
    monkeypatch.setattr(autotune, "_choices", None)  # a new process: read back from the file
    assert autotune.choices() == {k: v for k, v in choices.items() if " B8 " in k}
    with torch.no_grad():
        m(torch.randn(4, 32, 3))
    assert autotune.choices() == choices and len(timed) == 3 * 4 * 6  # the B32 class measured again


def test_results_do_not_depend_on_the_choice(tuner):
    torch.manual_seed(0)
    m = LSTM(3, 8, num_layers=2)
    x = torch.randn(20, 6, 3)
    got = []
    for choice in ("own", "torch"):
        autotune.forget()
        key = autotune.shape_class(m, x, None, True)
        autotune._load()[key] = choice
        got.append(_grads(m, x))
    for a, b in zip(*got):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_off_switch_and_only_a_plain_lstm_delegates(tuner, monkeypatch):
    autotune.enable(False)
    m = LSTM(3, 5)
    with torch.no_grad():
        m(torch.randn(4, 2, 3))
    assert autotune.choices() == {}
    autotune.enable(True)
    names = []
    real = autotune.choose
    monkeypatch.setattr(autotune, "choose", lambda key, cands, measure, default=None: (
        names.append(sorted(cands)), real(key, cands, measure, default))[1])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.no_grad():
            PhasedLSTM(3, 5)(torch.randn(4, 2, 3))
            m(torch.randn(4, 2, 3))
        assert names == [["batch", "rule", "units"], ["batch", "rule", "torch", "units"]]  # no torch for a Phased LSTM
        # one thread: one way to share a step, so nothing to measure but torch's LSTM against it
        names.clear()
        torch.set_num_threads(1)
        with torch.no_grad():
            PhasedLSTM(3, 5)(torch.randn(4, 2, 3))
            m(torch.randn(4, 2, 3))
        assert names == [["rule", "torch"]]
    finally:
        torch.set_num_threads(threads)


def test_a_candidate_replaces_the_default_only_by_the_margin(tuner):
    clocks = {"rule": 1.0, "units": 0.95, "batch": 0.85}
    assert autotune.choose("a", clocks, clocks.get, default="rule") == "batch"
    clocks = {"rule": 1.0, "units": 0.95, "batch": 0.92}
    assert autotune.choose("b", clocks, clocks.get, default="rule") == "rule"
    # torch's LSTM wherever it is within the margin of the fastest: a plain LSTM is not left behind
    # torch.nn.LSTM by a measurement's noise; the kernels serve it where they win by the margin
    clocks = {"rule": 1.0, "units": 0.99, "batch": 1.1, "torch": 0.97}
    assert autotune.choose("c", clocks, clocks.get, default="rule") == "torch"
    clocks = {"rule": 1.0, "units": 0.99, "batch": 1.1, "torch": 1.05}
    assert autotune.choose("d", clocks, clocks.get, default="rule") == "torch"
    clocks = {"rule": 0.85, "units": 0.99, "batch": 1.1, "torch": 1.0}
    assert autotune.choose("e", clocks, clocks.get, default="rule") == "rule"
    # only the choices that won by the margin are kept for other processes
    assert set(json.loads(autotune.choices_file().read_text())) == {"a", "e"}


def test_torch_runs_the_whole_stack_in_one_call_unless_dropout_draws_masks_between_layers():
    """All layers in one torch LSTM call (as torch.nn.LSTM makes it), except in training with dropout
    between layers, whose masks torch would draw in another order than every other path."""
    m = LSTM(3, 5, num_layers=2, dropout=0.3)
    x = torch.randn(4, 2, 3)
    assert m._candidates(m._own_path(x, True))["torch"] is paths.torch_lstm.run
    m.eval()
    assert m._candidates(m._own_path(x, False))["torch"] is paths.torch_lstm.run_stack
    m = LSTM(3, 5, num_layers=2)
    assert m._candidates(m._own_path(x, True))["torch"] is paths.torch_lstm.run_stack


@pytest.mark.parametrize("cls", [LSTM, PhasedLSTM, "layernorm"])
def test_every_split_equals_the_reference_and_the_backward_keeps_the_forwards_split(cls, monkeypatch):
    from phasedlstm import LayerNormLSTM, fast

    cls = LayerNormLSTM if cls == "layernorm" else cls
    torch.manual_seed(0)
    ref = cls(4, 6, impl="reference", dtype=torch.float64, num_layers=2)
    fst = copy.deepcopy(ref)
    fst.impl = "auto"
    x = torch.randn(7, 5, 4, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 5, 1, 7])
    want = _grads(ref, x, lengths=lengths)
    seen = []
    for name in ("_lstm_grads", "_ln_grads"):
        real = getattr(fast, name)
        monkeypatch.setattr(fast, name, lambda *a, real=real, **k: (seen.append(fast._split_in_force()), real(*a, **k))[1])
    for split in ("units", "batch"):
        run = autotune.with_split(fst._own_path(x, grad=True), split)
        object.__setattr__(fst, "_path", lambda steps, h0, c0, run=run: run)
        seen.clear()
        got = _grads(fst, x, lengths=lengths)  # (the backward runs after the forward's split was left)
        assert seen and set(seen) == {1 if split == "units" else 2}
        assert fast._split_in_force() == 0
        for a, b in zip(want, got):
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11)
