"""The layers inside graphs: torch.export with dynamic batch and sequence length, run at other sizes
than traced; torch.compile(fullgraph=True) (no graph break), outputs and gradients equal to eager."""

import copy
import os

import pytest
import torch

from phasedlstm import LSTM, LayerNormLSTM, PeepholeLSTM, PhasedLSTM, fast

if os.environ.get("PHASEDLSTM_REQUIRE_EXT") == "1" and not fast.load():  # CI sets it: no silent skip
    raise RuntimeError(f"PHASEDLSTM_REQUIRE_EXT=1 but the fused kernels are unavailable: {fast.unavailable_reason()}")
pytestmark = pytest.mark.skipif(not fast.load(), reason=f"fused kernels unavailable: {fast.unavailable_reason()}")

LAYERS = [LSTM, PeepholeLSTM, PhasedLSTM, LayerNormLSTM]


class Wrapped(torch.nn.Module):
    """x, times, lengths in; output and final state out (what a deployed model passes)."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, times, lengths):
        out, (h, c) = self.rnn(x, times=times, lengths=lengths)
        return out, h, c


def _inputs(B, T, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, 3, generator=g)
    times = torch.rand(B, T, generator=g, dtype=torch.float64).cumsum(1)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    return x, times, lengths


@pytest.mark.parametrize("cls", LAYERS)
def test_export_with_dynamic_batch_and_length(cls):
    torch.manual_seed(0)
    model = Wrapped(cls(3, 8, num_layers=2, bidirectional=True, batch_first=True)).eval()
    B, T = torch.export.Dim("B", min=2, max=4096), torch.export.Dim("T", min=2, max=1_000_000)
    ep = torch.export.export(model, _inputs(4, 10, 0),
                             dynamic_shapes={"x": {0: B, 1: T}, "times": {0: B, 1: T}, "lengths": {0: B}})
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("phasedlstm_fused" in o for o in ops)  # the kernels, as operators in the graph
    for b, t in ((7, 23), (2, 3), (5, 61), (5, 5), (20, 20)):  # B = T included: no guard between them
        args = _inputs(b, t, b + t)
        with torch.no_grad():
            want = model(*args)
        for g, w in zip(ep.module()(*args), want):
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("cls", LAYERS)
def test_compile_fullgraph_equals_eager_with_gradients(cls):
    torch.manual_seed(0)
    eager = cls(3, 8, num_layers=2, bidirectional=True, batch_first=True)
    compiled_model = copy.deepcopy(eager)

    def loss(model, x, times, lengths):
        out, (h, c) = model(x, times=times, lengths=lengths)
        return out.sin().sum() + h.sum() + c.cos().sum()

    compiled = torch.compile(loss, fullgraph=True)  # fullgraph: a graph break is an error
    x, times, lengths = _inputs(4, 10, 1)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    la, lb = loss(eager, xa, times, lengths), compiled(compiled_model, xb, times, lengths)
    la.backward()
    lb.backward()
    torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), compiled_model.parameters()):
        scale = float(p.grad.abs().max()) or 1.0
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-4 * scale, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("cls", LAYERS)
def test_vmap_runs_the_reference_and_fast_says_why_not(cls):
    torch.manual_seed(0)
    m = cls(3, 5)
    x = torch.randn(4, 6, 3)  # vmap over 4 unbatched sequences of 6 steps
    got = torch.func.vmap(lambda s: m(s)[0])(x)
    torch.testing.assert_close(got, torch.stack([m(s)[0] for s in x]), rtol=1e-5, atol=1e-6)
    m.impl = "fast"
    with pytest.raises(RuntimeError, match="inside a torch.func transform"):
        torch.func.vmap(lambda s: m(s)[0])(x)
