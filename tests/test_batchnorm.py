"""BatchNormLSTM: the equations of Cooijmans et al. against torch's own batch normalisation step by
step, statistics per time step over the running sequences, population statistics at evaluation
(the last kept step's beyond max_length), lengths, directions, saving, and training through the CLI;
the fused loop against the reference loop (outputs, every gradient, the statistics it moves)."""

import copy

import json

import pytest
import torch
import torch.nn.functional as F

from phasedlstm import BatchNormLSTM, cli, fast
from phasedlstm.models import SequenceModel

F64 = torch.float64
B, T, I, H = 5, 6, 3, 4


def _layer(**kw):
    torch.manual_seed(0)
    kw.setdefault("dtype", F64)
    layer = BatchNormLSTM(I, H, **kw)
    with torch.no_grad():  # gains away from their 0.1, so that a wrong gain shows
        for name, p in layer.named_parameters():
            if name.startswith("bn_"):
                p.uniform_(0.5, 1.5) if "weight" in name else p.uniform_(-0.5, 0.5)
    return layer


def _reference(layer, x, lengths=None, suffix="_l0", h=None, c=None):
    """The paper's equations with F.batch_norm at every step (time-major x (T, B, I)), on the
    sequences valid at that step, against copies of the layer's statistics; -> out, h, c, stats."""
    g = {n: getattr(layer, n + suffix) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "bn_ih_weight",
                                                 "bn_hh_weight", "bn_c_weight", "bn_c_bias")}
    stats = {n: getattr(layer, n + suffix).clone() for n in
             ("bn_ih_mean", "bn_ih_var", "bn_hh_mean", "bn_hh_var", "bn_c_mean", "bn_c_var")}
    Tn, Bn = x.shape[:2]
    lengths = torch.full((Bn,), Tn) if lengths is None else lengths
    h = x.new_zeros(Bn, H) if h is None else h
    c = x.new_zeros(Bn, H) if c is None else c
    last = stats["bn_ih_mean"].shape[0] - 1
    outs = []
    for t in range(Tn):
        k = min(t, last)
        rows = (lengths > t).nonzero().squeeze(1)
        out_t = x.new_zeros(Bn, H)
        if len(rows):
            def bn(z, name, w, b=None):
                return F.batch_norm(z, stats[name + "_mean"][k], stats[name + "_var"][k], w, b, layer.training, 0.1, 1e-5)

            a = (bn(x[t, rows] @ g["weight_ih"].T, "bn_ih", g["bn_ih_weight"]) + g["bias_ih"]
                 + bn(h[rows] @ g["weight_hh"].T, "bn_hh", g["bn_hh_weight"]) + g["bias_hh"])
            i, f, gg, o = a.chunk(4, 1)
            c_new = torch.sigmoid(f) * c[rows] + torch.sigmoid(i) * torch.tanh(gg)
            h_new = torch.sigmoid(o) * torch.tanh(bn(c_new, "bn_c", g["bn_c_weight"], g["bn_c_bias"]))
            h = h.index_copy(0, rows, h_new)
            c = c.index_copy(0, rows, c_new)
            out_t = out_t.index_copy(0, rows, h_new)
        outs.append(out_t)
    return torch.stack(outs), h, c, stats


IMPLS = ["reference", pytest.param("fast", marks=pytest.mark.skipif(not fast.load(), reason="no fused kernels"))]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("with_lengths", [False, True])
def test_training_step_equals_torch_batch_norm_per_step_outputs_gradients_and_statistics(with_lengths, impl):
    layer = _layer(max_length=4, impl=impl)  # T = 6 > 4: steps 3, 4, 5 share the last slot
    x = torch.randn(T, B, I, dtype=F64, requires_grad=True)
    lengths = torch.tensor([6, 2, 4, 6, 3]) if with_lengths else None
    ref_out, ref_h, ref_c, ref_stats = _reference(layer, x, lengths)
    out, (h, c) = layer(x, lengths=lengths)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(h[0], ref_h)
    torch.testing.assert_close(c[0], ref_c)
    for name, value in ref_stats.items():
        torch.testing.assert_close(getattr(layer, name + "_l0"), value, msg=name)
    # gradients through the batch statistics (training-mode outputs do not read the running ones)
    w = torch.randn_like(out)
    ga = torch.autograd.grad((out * w).sum(), [x, *layer.parameters()])
    gb = torch.autograd.grad((ref_out * w).sum(), [x, *layer.parameters()])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("impl", IMPLS)
def test_evaluation_uses_each_steps_population_statistics_and_the_last_beyond_max_length(impl):
    layer = _layer(max_length=3, impl=impl)
    for _ in range(3):  # population statistics that differ per step
        layer(torch.randn(T, 8, I, dtype=F64) * torch.linspace(0.5, 3, T, dtype=F64)[:, None, None])
    layer.eval()
    x = torch.randn(T, B, I, dtype=F64)
    with torch.no_grad():
        out, _ = layer(x)
    torch.testing.assert_close(out, _reference(layer, x)[0])
    assert not torch.equal(layer.bn_hh_mean_l0[1], layer.bn_hh_mean_l0[2])


def test_at_evaluation_each_sequence_of_a_padded_batch_is_its_own():
    """Population statistics make rows independent: a sequence alone equals its row of a padded
    batch, and NaN in the padding reaches nothing."""
    layer = _layer()
    layer(torch.randn(T, 8, I, dtype=F64))
    layer.eval()
    x = torch.randn(B, T, I, dtype=F64)
    lengths = torch.tensor([6, 2, 4, 1, 3])
    for b in range(B):
        x[b, lengths[b]:] = float("nan")
    with torch.no_grad():
        out, (h, _) = layer(x.transpose(0, 1), lengths=lengths)
        for b in range(B):
            n = int(lengths[b])
            alone, (h_b, _) = layer(x[b:b + 1, :n].transpose(0, 1))
            torch.testing.assert_close(out[:n, b], alone[:, 0])
            torch.testing.assert_close(h[0, b], h_b[0, 0])
            assert (out[n:, b] == 0).all()


def test_padding_in_training_is_not_in_the_statistics():
    layer = _layer()
    x = torch.randn(T, B, I, dtype=F64)
    lengths = torch.tensor([6, 2, 4, 6, 3])
    noisy = x.clone()
    for b in range(B):
        noisy[lengths[b]:, b] = 1e6
    a, _ = layer(x, lengths=lengths)
    b_, _ = _layer()(noisy, lengths=lengths)
    torch.testing.assert_close(a, b_)


def test_bidirectional_two_layers_each_direction_has_its_statistics():
    x = torch.randn(T, B, I, dtype=F64)
    lengths = torch.tensor([6, 2, 4, 6, 3])
    out, (h, c) = _layer(num_layers=2, bidirectional=True)(x, lengths=lengths)
    assert out.shape == (T, B, 2 * H) and h.shape == (4, B, H) and torch.isfinite(out).all()
    layer = _layer(bidirectional=True, max_length=T)
    out, (h, c) = layer(x, lengths=lengths)
    # the backward direction: the reference on each sequence reversed within its length
    from phasedlstm.layers import reverse_padded

    fresh = _layer(bidirectional=True, max_length=T)
    back, _, _, stats = _reference(fresh, reverse_padded(x, lengths), lengths, suffix="_l0_reverse")
    torch.testing.assert_close(out[:, :, H:], reverse_padded(back, lengths))
    torch.testing.assert_close(layer.bn_c_var_l0_reverse, stats["bn_c_var"])
    assert not torch.equal(layer.bn_c_var_l0_reverse, layer.bn_c_var_l0)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_in_float64_with_a_step_of_one_running_sequence(impl):
    """Every parameter's gradient against finite differences, with steps at which one sequence runs
    (its batch statistics are its own row: the normalised terms are the shifts alone)."""
    layer = _layer(max_length=2, impl=impl)
    x = torch.randn(4, 4, I, dtype=F64, requires_grad=True)
    buffers = {n: b.clone() for n, b in layer.named_buffers()}
    names = [n for n, _ in layer.named_parameters()]

    def f(x, *params):
        layer.load_state_dict(buffers, strict=False)  # the same statistics at every call
        out, (h, c) = torch.func.functional_call(layer, dict(zip(names, params)), (x,),
                                                 {"lengths": torch.tensor([4, 1, 2, 2])})
        return out, h, c

    assert torch.autograd.gradcheck(f, (x, *[p.detach().requires_grad_() for p in layer.parameters()]))


@pytest.mark.skipif(not fast.load(), reason="no fused kernels")
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_the_fused_loop_equals_the_reference_loop(dtype, training, bias):
    """Two layers, both directions, lengths with steps of one and two running sequences, 12 steps
    (float32: the packed products), max_length 5 (later steps share the last statistics): outputs,
    final state, the gradients of the input, the initial state and every parameter, and the
    statistics training moves. float64: equal to its tolerance; float32: as close to the float64
    numbers as the reference loop in float32 is, within a factor 4 (batch statistics of two sequences normalise by up
    to 1 / sqrt(eps) = 316, which magnifies every rounding, in both loops alike)."""
    torch.manual_seed(0)
    ref = BatchNormLSTM(I, 8, num_layers=2, bidirectional=True, bias=bias, max_length=5, impl="reference").to(dtype)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.startswith("bn_"):
                p.uniform_(0.5, 1.5) if "weight" in name else p.uniform_(-0.5, 0.5)
        for b in ref.buffers():
            b.add_(torch.rand_like(b))
    fused = copy.deepcopy(ref)
    fused.impl = "fast"
    truth = copy.deepcopy(ref).double()
    x, h0, c0 = torch.randn(12, 6, I, dtype=dtype), torch.randn(4, 6, 8, dtype=dtype), torch.randn(4, 6, 8, dtype=dtype)
    lengths = torch.tensor([12, 3, 12, 1, 7, 2])
    got = []
    for layer in (ref, fused, truth):
        layer.train(training)
        inputs = [t.to(next(layer.parameters()).dtype).requires_grad_() for t in (x, h0, c0)]
        out, (h, c) = layer(inputs[0], tuple(inputs[1:]), lengths=lengths)
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
        loss = (out * weights).sum() + (h * h).sum() + c.sum()
        grads = torch.autograd.grad(loss, [*inputs, *layer.parameters()])
        got.append([out, h, c, *grads, *[b.clone() for b in layer.buffers()]])
    names = ["out", "h_n", "c_n", "x", "h0", "c0"] + [n for n, _ in ref.named_parameters()] + \
            [n for n, _ in ref.named_buffers()]
    for name, r, f, t in zip(names, *got):
        if dtype == F64:
            torch.testing.assert_close(f, r, msg=name)
        else:
            err_ref, err_fused = (r.double() - t).abs().max(), (f.double() - t).abs().max()
            assert err_fused <= 4 * err_ref + 1e-5 * t.abs().max(), (name, float(err_fused), float(err_ref))


@pytest.mark.skipif(not fast.load(), reason="no fused kernels")
def test_a_second_derivative_through_the_fused_loop_equals_the_reference_loops():
    torch.manual_seed(0)
    ref = _layer(impl="reference")
    fused = copy.deepcopy(ref)
    fused.impl = "fast"
    x = torch.randn(T, B, I, dtype=F64)
    got = []
    for layer in (ref, fused):
        buffers = {n: b.clone() for n, b in layer.named_buffers()}
        out, _ = layer(x, lengths=torch.tensor([6, 2, 4, 6, 1]))
        g = torch.autograd.grad(out.square().sum(), layer.weight_hh_l0, create_graph=True)[0]
        got.append(torch.autograd.grad(g.square().sum(), [*layer.parameters()]))
        layer.load_state_dict(buffers, strict=False)
    for a, b in zip(*got):
        torch.testing.assert_close(b, a)


def test_arguments_refused_with_what_was_expected():
    with pytest.raises(ValueError, match="no scan or ONNX form: impl must be 'auto', 'fast' or 'reference', got 'scan'"):
        BatchNormLSTM(2, 3, impl="scan")
    with pytest.raises(ValueError, match="got 'onnx'"):
        BatchNormLSTM(2, 3, impl="onnx")
    with pytest.raises(ValueError, match="max_length must be >= 1, got 0"):
        BatchNormLSTM(2, 3, max_length=0)
    with pytest.raises(TypeError, match="max_length must be an int"):
        BatchNormLSTM(2, 3, max_length=2.5)
    with pytest.raises(ValueError, match="proj_size is supported by LSTM and PeepholeLSTM, not BatchNormLSTM"):
        BatchNormLSTM(2, 3, proj_size=1)


def test_gains_start_at_one_tenth_and_statistics_save_and_load(tmp_path):
    layer = BatchNormLSTM(2, 3, max_length=5)
    assert (layer.bn_ih_weight_l0 == 0.1).all() and (layer.bn_c_weight_l0 == 0.1).all()
    assert (layer.bn_c_bias_l0 == 0).all()
    assert sorted(n for n, _ in layer.named_buffers()) == sorted(
        f"bn_{k}_{s}_l0" for k in ("ih", "hh", "c") for s in ("mean", "var"))
    layer(torch.randn(4, 6, 2))
    layer.save_pretrained(tmp_path / "m")
    again = BatchNormLSTM.from_pretrained(tmp_path / "m")
    for (n, a), (_, b) in zip(layer.state_dict().items(), again.state_dict().items()):
        torch.testing.assert_close(a, b, msg=n)
    layer.reset_running_stats()
    assert (layer.bn_hh_mean_l0 == 0).all() and (layer.bn_hh_var_l0 == 1).all()


def test_the_command_line_trains_a_batchnorm_model(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main(["train", "--task", "freq-async", "--model", "batchnorm", "--hidden-size", "8", "--epochs", "1",
                   "--n-train", "64", "--n-val", "16", "--n-test", "16", "--out", str(out), "--no-progress"])
    assert rc == 0
    assert "(the reference loop: BatchNormLSTM has no fused kernels)" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["model"] == "batchnorm"
    from phasedlstm.train import load_run_model

    cfg, task, model, _ = load_run_model(out / "best.pt")
    assert isinstance(model.rnn, BatchNormLSTM)
    assert model.rnn.max_length == int(task.train.lengths.max())
    assert model.rnn.bn_hh_var_l0[1].ne(1).any()  # statistics gathered in training came back


def test_sequence_model_with_batchnorm_runs_with_lengths():
    m = SequenceModel("batchnorm", 3, 6, 2, proj_size=4, max_length=9)
    x = torch.randn(4, 9, 3)
    y = m(x, torch.arange(9.0).expand(4, 9), torch.tensor([9, 3, 5, 1]))
    assert y.shape == (4, 2) and torch.isfinite(y).all()


def test_export_to_graphs_and_streaming_are_refused_with_what_to_do_instead(tmp_path):
    from phasedlstm import Stream
    from phasedlstm.export import ExportError, export

    m = SequenceModel("batchnorm", 2, 4, 2, proj_size=0, max_length=5).eval()
    for fmt in ("pt2", "onnx"):
        with pytest.raises(ExportError, match="does not export to .pt2 or ONNX.*safetensors"):
            export(m, tmp_path / f"m.{fmt}", fmt)
    with pytest.raises(ValueError, match="Stream cannot feed a BatchNormLSTM"):
        Stream(BatchNormLSTM(2, 3))


@pytest.mark.skipif(not fast.load(), reason="no fused kernels")
@pytest.mark.parametrize("value", [1e4, 1e30, float("inf")])
def test_the_fused_loop_at_huge_and_infinite_inputs(value):
    """Inputs of +-1e4, +-1e30 and +-inf in float32: NaN where the reference loop has NaN, and
    elsewhere the numbers of the float64 reference (the statistics are summed in double, as
    torch's batch norm does, so squares near float32's limit do not overflow)."""
    torch.manual_seed(0)
    ref = BatchNormLSTM(I, 5, impl="reference")
    fused = copy.deepcopy(ref)
    fused.impl = "fast"
    x = torch.randn(T, 4, I)
    x[2, 1, 0], x[3, 2, 1] = value, -value
    got = []
    for layer, xs in ((ref, x), (fused, x), (copy.deepcopy(ref).double(), x.double())):
        xs = xs.clone().requires_grad_()
        out, _ = layer(xs)
        got.append([out, *torch.autograd.grad(out.sum(), [xs, *layer.parameters()])])
    for r, f, t in zip(*got):
        assert torch.equal(f.isnan(), r.isnan())
        torch.testing.assert_close(f.double().nan_to_num(), t.nan_to_num(), rtol=1e-3, atol=1e-4)
