"""phasedlstm.LSTM with a torch.nn.LSTM state_dict equals torch.nn.LSTM: outputs, state, gradients."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from phasedlstm import LSTM, LayerNormLSTM, PeepholeLSTM, PhasedLSTM


def _pair(num_layers, bidirectional, batch_first, dtype=torch.float64):
    ref = torch.nn.LSTM(3, 5, num_layers, bidirectional=bidirectional, batch_first=batch_first, dtype=dtype)
    ours = LSTM(3, 5, num_layers, bidirectional=bidirectional, batch_first=batch_first, dtype=dtype)
    ours.load_state_dict(ref.state_dict())  # unchanged: same names and shapes
    return ref, ours


def _grads(module, *tensors):
    return [p.grad.clone() for p in module.parameters()] + [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_equals_torch_lstm(num_layers, bidirectional, batch_first):
    ref, ours = _pair(num_layers, bidirectional, batch_first)
    D = 2 if bidirectional else 1
    shape = (4, 6, 3) if batch_first else (6, 4, 3)
    results = []
    for m in (ref, ours):
        torch.manual_seed(1)
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        h0 = torch.randn(num_layers * D, 4, 5, dtype=torch.float64, requires_grad=True)
        c0 = torch.randn(num_layers * D, 4, 5, dtype=torch.float64, requires_grad=True)
        out, (h, c) = m(x, (h0, c0))
        (out.sin().sum() + h.cos().sum() + (c * c).sum()).backward()
        results.append(([out, h, c], _grads(m, x, h0, c0)))
    (vals_r, grads_r), (vals_o, grads_o) = results
    for a, b in zip(vals_r + grads_r, vals_o + grads_o):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_equals_torch_lstm_float32_default_state():
    ref, ours = _pair(2, True, False, dtype=torch.float32)
    x = torch.randn(9, 3, 3)
    (o1, (h1, c1)), (o2, (h2, c2)) = ref(x), ours(x)
    torch.testing.assert_close(o2, o1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h2, h1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c2, c1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lengths_equal_packed_sequence(bidirectional):
    """Our lengths semantics are torch's packed sequences: zero output past the end,
    h_n/c_n at the last valid step, the backward direction starting there."""
    ref, ours = _pair(2, bidirectional, True)
    lengths = torch.tensor([6, 2, 4, 1])
    results = []
    for packed in (True, False):
        torch.manual_seed(2)
        x = torch.randn(4, 6, 3, dtype=torch.float64, requires_grad=True)
        if packed:
            out, (h, c) = ref(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=6)
            m = ref
        else:
            out, (h, c) = ours(x, lengths=lengths)
            m = ours
        (out.sin().sum() + h.sum() + c.sum()).backward()
        results.append(([out, h, c], _grads(m, x)))
    for a, b in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_unbatched_equals_torch():
    ref, ours = _pair(2, True, False)
    x = torch.randn(5, 3, dtype=torch.float64)
    h0 = torch.randn(4, 5, dtype=torch.float64)
    c0 = torch.randn(4, 5, dtype=torch.float64)
    (o1, (h1, c1)), (o2, (h2, c2)) = ref(x, (h0, c0)), ours(x, (h0, c0))
    assert o2.shape == o1.shape == (5, 10) and h2.shape == h1.shape == (4, 5)
    for a, b in ((o1, o2), (h1, h2), (c1, c2)):
        torch.testing.assert_close(b, a)


def test_parameter_names_match_torch():
    ref, ours = _pair(2, True, True)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for (n1, p1), (n2, p2) in zip(ref.named_parameters(), ours.named_parameters()):
        assert n1 == n2 and p1.shape == p2.shape


def test_forget_bias_init():
    default = LSTM(3, 8)
    plus_one = LSTM(3, 8, forget_bias=1.0)
    bound = 1 / 8**0.5
    assert default.bias_ih_l0.abs().max() <= bound
    f = plus_one.bias_ih_l0[8:16]
    assert ((f >= 1 - bound) & (f <= 1 + bound)).all()
    others = torch.cat([plus_one.bias_ih_l0[:8], plus_one.bias_ih_l0[16:]])
    assert others.abs().max() <= bound


@pytest.mark.parametrize("cls", [LSTM, PeepholeLSTM, PhasedLSTM, LayerNormLSTM])
def test_gate_bias_init(cls):
    """gate_bias=(i, f, g, o): every layer and direction's bias_ih starts at those constants per gate
    and bias_hh at zero (the Phased LSTM authors' (-0.1, 0, 0, 0)); the weights keep their init;
    wrong values are refused with what was expected."""
    m = cls(3, 8, num_layers=2, bidirectional=True, gate_bias=(-0.1, 0.0, 0.5, 2.0))
    want = torch.tensor([-0.1] * 8 + [0.0] * 8 + [0.5] * 8 + [2.0] * 8)
    for name, p in m.named_parameters():
        if name.startswith("bias_ih"):
            assert torch.equal(p.detach(), want.to(p.dtype)), name
        elif name.startswith("bias_hh"):
            assert not p.detach().any(), name
        elif name.startswith("weight_"):
            assert p.detach().abs().max() <= 1 / 8**0.5 and p.detach().std() > 0, name
    assert "gate_bias=(-0.1, 0.0, 0.5, 2.0)" in repr(m)
    with pytest.raises(ValueError, match="four finite numbers"):
        cls(3, 8, gate_bias=(0.0, 1.0, 0.0))
    with pytest.raises(ValueError, match="four finite numbers"):
        cls(3, 8, gate_bias=(0.0, float("nan"), 0.0, 0.0))
    with pytest.raises(TypeError, match="four numbers"):
        cls(3, 8, gate_bias="-0.1")
    with pytest.raises(ValueError, match="needs bias=True"):
        cls(3, 8, bias=False, gate_bias=(0.0, 0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="not both"):
        cls(3, 8, forget_bias=1.0, gate_bias=(0.0, 0.0, 0.0, 0.0))


# -- the rest of torch.nn.LSTM's surface: PackedSequence, flatten_parameters, all_weights --------

from torch.nn.utils.rnn import PackedSequence, pack_sequence  # noqa: E402


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("enforce_sorted", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_packed_sequence_in_and_out_equals_torch(num_layers, bidirectional, enforce_sorted, batch_first):
    ref, ours = _pair(num_layers, bidirectional, batch_first)
    lengths = torch.tensor([7, 5, 5, 2]) if enforce_sorted else torch.tensor([2, 7, 5, 5])
    torch.manual_seed(2)
    x = torch.randn(4, 7, 3, dtype=torch.float64)
    D = 2 if bidirectional else 1
    h0 = torch.randn(num_layers * D, 4, 5, dtype=torch.float64)
    results = []
    for m in (ref, ours):
        xx = x.clone().requires_grad_()
        inp = xx if batch_first else xx.transpose(0, 1)
        packed = pack_padded_sequence(inp, lengths, batch_first=batch_first, enforce_sorted=enforce_sorted)
        out, (h, c) = m(packed, (h0, torch.zeros_like(h0)))
        assert isinstance(out, PackedSequence)
        (out.data.sin().sum() + h.sum() + c.cos().sum()).backward()
        results.append((out, h, c, xx.grad, [p.grad for p in m.parameters()]))
    (o1, h1, c1, g1, p1), (o2, h2, c2, g2, p2) = results
    torch.testing.assert_close(o2.data, o1.data, rtol=1e-10, atol=1e-12)
    assert torch.equal(o2.batch_sizes, o1.batch_sizes)
    for a, b in [(o1.sorted_indices, o2.sorted_indices), (o1.unsorted_indices, o2.unsorted_indices)]:
        assert (a is None and b is None) or torch.equal(a, b)
    for a, b in zip([h1, c1, g1, *p1], [h2, c2, g2, *p2]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_packed_sequence_with_times_for_the_phased_lstm():
    """times given padded in the batch's order: the same numbers as the padded call with lengths."""
    m = PhasedLSTM(2, 6, batch_first=True, dtype=torch.float64)
    seqs = [torch.randn(n, 2, dtype=torch.float64) for n in (3, 8, 5)]
    times = torch.rand(3, 8, dtype=torch.float64).cumsum(1)
    out, (h, c) = m(pack_sequence(seqs, enforce_sorted=False), times=times)
    padded, lens = pad_packed_sequence(out, batch_first=True)
    x = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True)
    want, (hw, cw) = m(x, times=times, lengths=lens)
    torch.testing.assert_close(padded, want)
    torch.testing.assert_close(h, hw)


@pytest.mark.parametrize("cls", [LSTM, PeepholeLSTM, PhasedLSTM, LayerNormLSTM])
def test_flatten_parameters_all_weights_and_script(cls):
    m = cls(3, 4, 2, bidirectional=True)
    m.flatten_parameters()  # code written for cuDNN calls it; a no-op here
    assert len(m.all_weights) == 4 and len(m._flat_weights) == len(m._flat_weights_names) == len(list(m.parameters()))
    ref = torch.nn.LSTM(3, 4, 2, bidirectional=True)
    for ours, theirs in zip(m.all_weights, ref.all_weights):
        assert [p.shape for p in ours[:4]] == [p.shape for p in theirs]
    with pytest.raises(RuntimeError, match="torch.jit.trace, torch.export.export or torch.compile"):
        torch.jit.script(m)


class RNNModel(torch.nn.Module):
    def __init__(self, rnn_cls, ntoken=20, ninp=8, nhid=12, nlayers=2):
        super().__init__()
        self.encoder = torch.nn.Embedding(ntoken, ninp)
        self.rnn = rnn_cls(ninp, nhid, nlayers, dropout=0.0)  # (dropout draws would differ)
        self.decoder = torch.nn.Linear(nhid, ntoken)
        self.nlayers, self.nhid = nlayers, nhid

    def forward(self, input, hidden):
        output, hidden = self.rnn(self.encoder(input), hidden)
        return torch.nn.functional.log_softmax(self.decoder(output), dim=-1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))

def repackage_hidden(h):
    return h.detach() if isinstance(h, torch.Tensor) else tuple(repackage_hidden(v) for v in h)


def test_a_training_script_written_for_torch_lstm_runs_to_its_end(tmp_path):
    """The shape of pytorch/examples' word_language_model, unchanged but for the class: init_hidden
    from weight.new_zeros, repackaged hidden state, clip_grad_norm_, flatten_parameters after
    loading, torch.save of the whole model."""

    losses = {}
    for cls in (torch.nn.LSTM, LSTM):
        torch.manual_seed(0)
        model = RNNModel(cls)
        if cls is LSTM:  # the same initial weights as torch's
            model.load_state_dict(losses["state"])
        else:
            losses["state"] = {k: v.clone() for k, v in model.state_dict().items()}
        data = torch.randint(0, 20, (60, 4))
        hidden = model.init_hidden(4)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        run = []
        for i in range(0, 50, 10):
            x, y = data[i : i + 10], data[i + 1 : i + 11]
            hidden = repackage_hidden(hidden)
            model.zero_grad()
            out, hidden = model(x, hidden)
            loss = torch.nn.functional.nll_loss(out.view(-1, 20), y.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            opt.step()
            run.append(loss.item())
        path = tmp_path / f"{cls.__name__}.pt"
        torch.save(model, path)
        model = torch.load(path, weights_only=False)
        model.rnn.flatten_parameters()  # where the example crashed
        model.eval()
        with torch.no_grad():
            run.append(torch.nn.functional.nll_loss(model(data[:10], model.init_hidden(4))[0].view(-1, 20),
                                                    data[1:11].reshape(-1)).item())
        losses[cls] = run
    assert losses[LSTM] == pytest.approx(losses[torch.nn.LSTM], rel=1e-4)


@pytest.mark.parametrize("cls", [LSTM, PhasedLSTM])
def test_autocast_gives_outputs_in_autocast_dtype(cls):
    """Under torch.autocast("cpu", bfloat16) torch.nn.LSTM's oneDNN path returns bfloat16 output and
    state (on this development CPU it fails to create its primitive instead; its native path returns
    float32). Ours returns autocast's dtype, computed in float32 and rounded once."""
    ours = cls(3, 5, batch_first=True)
    x = torch.randn(2, 6, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h, c) = ours(x)
        out.float().sum().backward()  # gradients flow through the casts
    assert (out.dtype, h.dtype, c.dtype) == (torch.bfloat16,) * 3
    with torch.no_grad():
        full, (hf, cf) = ours(x)
    torch.testing.assert_close(out, full.to(torch.bfloat16), rtol=0, atol=0)
    torch.testing.assert_close(h, hf.to(torch.bfloat16), rtol=0, atol=0)
    assert ours.weight_ih_l0.grad is not None


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_projections_equal_torch(num_layers, bidirectional):
    """proj_size: torch.nn.LSTM's state_dict (with weight_hr) loads and gives its numbers."""
    ref = torch.nn.LSTM(3, 6, num_layers, bidirectional=bidirectional, batch_first=True, proj_size=4,
                        dtype=torch.float64)
    ours = LSTM(3, 6, num_layers, bidirectional=bidirectional, batch_first=True, proj_size=4, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    D = 2 if bidirectional else 1
    torch.manual_seed(3)
    x = torch.randn(5, 7, 3, dtype=torch.float64)
    h0 = torch.randn(num_layers * D, 5, 4, dtype=torch.float64)
    c0 = torch.randn(num_layers * D, 5, 6, dtype=torch.float64)
    res = []
    for m in (ref, ours):
        xx = x.clone().requires_grad_()
        out, (h, c) = m(xx, (h0, c0))
        (out.sin().sum() + h.sum() + c.cos().sum()).backward()
        res.append([out, h, c, xx.grad] + [p.grad for p in m.parameters()])
    assert res[1][0].shape == (5, 7, 4 * D) and res[1][1].shape == (num_layers * D, 5, 4)
    for a, b in zip(*res):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    lengths = torch.tensor([7, 3, 5, 1, 6])  # packed, as torch
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    torch.testing.assert_close(ours(packed)[0].data, ref(packed)[0].data, rtol=1e-10, atol=1e-12)


def test_projections_where_they_apply():
    m = PeepholeLSTM(3, 6, proj_size=2, batch_first=True)
    out, (h, c) = m(torch.randn(2, 4, 3))
    assert out.shape == (2, 4, 2) and h.shape == (1, 2, 2) and c.shape == (1, 2, 6)
    with pytest.raises(ValueError, match="proj_size is supported by LSTM and PeepholeLSTM, not PhasedLSTM"):
        PhasedLSTM(3, 6, proj_size=2)
    with pytest.raises(ValueError, match="proj_size must be smaller than hidden_size"):
        LSTM(3, 6, proj_size=6)
    with pytest.raises(RuntimeError, match="no projections"):
        LSTM(3, 6, proj_size=2, impl="fast")(torch.randn(4, 3))
