"""The experiment model: cross entropy from its equation, pooling over valid steps, the torch baseline."""

import pytest
import torch
import torch.nn.functional as F

from phasedlstm.models import SequenceModel, cross_entropy, log_softmax, mse


def test_cross_entropy_equals_torch():
    logits = torch.randn(16, 5, dtype=torch.float64) * 30  # large logits: stability matters
    y = torch.randint(0, 5, (16,))
    torch.testing.assert_close(cross_entropy(logits, y), F.cross_entropy(logits, y))
    torch.testing.assert_close(log_softmax(logits), F.log_softmax(logits, -1))
    logits.requires_grad_(True)
    g1, = torch.autograd.grad(cross_entropy(logits, y), logits)
    g2, = torch.autograd.grad(F.cross_entropy(logits, y), logits)
    torch.testing.assert_close(g1, g2)


def test_mse():
    assert mse(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])) == 5.0


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_pooling_uses_valid_steps_only(pooling):
    m = SequenceModel("lstm", 3, 8, 4, pooling=pooling, proj_size=5).double()
    x = torch.randn(3, 6, 3, dtype=torch.float64)
    t = torch.arange(6.0, dtype=torch.float64).expand(3, 6)
    lengths = torch.tensor([6, 2, 4])
    out = m(x, t, lengths)
    for b, n in enumerate(lengths.tolist()):
        feats = m.features(x[b : b + 1, :n], t[b : b + 1, :n], torch.tensor([n]))[0]
        pooled = feats[-1] if pooling == "last" else feats.mean(0)
        torch.testing.assert_close(out[b], m.head(pooled))


def test_torch_lstm_baseline_equals_our_lstm():
    ours = SequenceModel("lstm", 3, 8, 4).double()
    ref = SequenceModel("torch-lstm", 3, 8, 4).double()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 6, 3, dtype=torch.float64)
    t = torch.arange(6.0, dtype=torch.float64).expand(3, 6)
    lengths = torch.tensor([6, 2, 4])
    torch.testing.assert_close(ref(x, t, lengths), ours(x, t, lengths))


def test_regression_head_and_errors():
    m = SequenceModel("phased", 2, 8, 1)
    out = m(torch.randn(4, 5, 2), torch.arange(5.0).expand(4, 5), torch.tensor([5, 5, 3, 1]))
    assert out.shape == (4, 1)
    assert m.loss(out, torch.rand(4)).ndim == 0
    with pytest.raises(ValueError, match="unknown model 'gru'"):
        SequenceModel("gru", 2, 8, 1)
    with pytest.raises(ValueError, match="pooling must be one of"):
        SequenceModel("lstm", 2, 8, 1, pooling="max")
