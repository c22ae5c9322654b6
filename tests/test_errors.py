"""Every bad input raises ValueError or TypeError from our code, naming what was expected and what came."""

import pytest
import torch

from phasedlstm import LSTM, LSTMCell, PeepholeLSTM, PhasedLSTM, PhasedLSTMCell

B, T, I, H = 2, 5, 3, 4


@pytest.fixture
def layer():
    return PhasedLSTM(I, H, num_layers=2, batch_first=True)


def x_ok():
    return torch.randn(B, T, I)


# -- constructor ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"hidden_size": 0}, ValueError, "hidden_size must be >= 1, got 0"),
        ({"hidden_size": 4.0}, TypeError, "hidden_size must be an int"),
        ({"input_size": 0}, ValueError, "input_size must be >= 1"),
        ({"num_layers": 0}, ValueError, "num_layers must be >= 1"),
        ({"dropout": 1.5}, ValueError, r"dropout must be in \[0, 1\], got 1.5"),
        ({"dropout": -0.1}, ValueError, r"dropout must be in \[0, 1\]"),
        ({"bidirectional": 1}, TypeError, "bidirectional must be a bool"),
        ({"r_on": 0.0}, ValueError, r"r_on must be in \(0, 1\], got 0.0"),
        ({"r_on": 1.5}, ValueError, r"r_on must be in \(0, 1\]"),
        ({"period_init": (6.0, 1.0)}, ValueError, r"period_init must be finite and increasing.*got \(6.0, 1.0\)"),
        ({"period_init": (1.0, 1.0)}, ValueError, "increasing"),
        ({"period_init": 3.0}, TypeError, "period_init must be a pair"),
        ({"leak": -1.0}, ValueError, "leak must be"),
    ],
)
def test_constructor_arguments(kwargs, exc, match):
    args = {"input_size": I, "hidden_size": H, **kwargs}
    with pytest.raises(exc, match=match):
        PhasedLSTM(**args)


def test_cell_constructor_arguments():
    with pytest.raises(ValueError, match="hidden_size must be >= 1"):
        LSTMCell(3, 0)
    with pytest.raises(ValueError, match="r_on"):
        PhasedLSTMCell(3, 4, r_on=0)


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="no effect with num_layers=1"):
        LSTM(I, H, dropout=0.2)


# -- input ---------------------------------------------------------------------------------


def test_input_rank(layer):
    with pytest.raises(ValueError, match=r"Expected input of 3 dimensions.*got 4 dimensions of shape \(1, 2, 5, 3\)"):
        layer(torch.randn(1, B, T, I))
    with pytest.raises(ValueError, match="got 1 dimensions"):
        layer(torch.randn(I))


def test_input_features(layer):
    with pytest.raises(ValueError, match=r"Expected input with 3 features \(last dimension\), got shape \(2, 5, 7\)"):
        layer(torch.randn(B, T, 7))


def test_integer_input(layer):
    with pytest.raises(TypeError, match="input must be a floating-point tensor, got dtype torch.int64"):
        layer(torch.ones(B, T, I, dtype=torch.int64))


def test_input_not_a_tensor(layer):
    with pytest.raises(TypeError, match="input must be a torch.Tensor, got list"):
        layer([[1.0, 2.0, 3.0]])


def test_input_dtype_differs_from_parameters(layer):
    with pytest.raises(TypeError, match="input has dtype torch.float64 but the module's parameters have dtype torch.float32"):
        layer(torch.randn(B, T, I, dtype=torch.float64))


def test_empty_sequence(layer):
    with pytest.raises(ValueError, match="at least one step"):
        layer(torch.randn(B, 0, I))


# -- times ---------------------------------------------------------------------------------


def test_times_wrong_shape(layer):
    with pytest.raises(ValueError, match=r"Expected times of shape \(2, 5\) or \(5,\).*got \(2, 4\)"):
        layer(x_ok(), times=torch.zeros(B, T - 1))
    with pytest.raises(ValueError, match="Expected times of shape"):
        layer(x_ok(), times=torch.zeros(B, T, 1))


def test_times_non_finite(layer):
    t = torch.arange(T, dtype=torch.float64).repeat(B, 1)
    t[1, 3] = float("nan")
    with pytest.raises(ValueError, match="times must be finite.*nan at sample 1, step 3"):
        layer(x_ok(), times=t)
    t[1, 3] = float("inf")
    with pytest.raises(ValueError, match="times must be finite"):
        layer(x_ok(), times=t)


def test_times_decreasing(layer):
    t = torch.arange(T, dtype=torch.float64).repeat(B, 1)
    t[0, 2] = 0.5
    with pytest.raises(ValueError, match="non-decreasing.*sample 0 goes from 1.0 at step 1 to 0.5 at step 2"):
        layer(x_ok(), times=t)


def test_times_decreasing_in_padding_is_allowed(layer):
    t = torch.arange(T, dtype=torch.float64).repeat(B, 1)
    t[1, 3:] = 0.0  # padding
    layer(x_ok(), times=t, lengths=torch.tensor([T, 3]))
    with pytest.raises(ValueError, match="non-decreasing"):
        layer(x_ok(), times=t, lengths=torch.tensor([T, 4]))


def test_shared_times_are_checked_up_to_the_longest_sequence(layer):
    """Timestamps shared by the batch, (T,), with lengths: a step back after the longest sequence's
    end is padding; one within it, or a non-finite value anywhere, is refused (the kernels' one-pass
    check and the tensor operations behind the message agree)."""
    t = torch.arange(T, dtype=torch.float64)
    t[4:] = -1.0
    layer(x_ok(), times=t, lengths=torch.tensor([4, 2]))
    with pytest.raises(ValueError, match="non-decreasing.*goes from 3.0 at step 3 to -1.0 at step 4"):
        layer(x_ok(), times=t, lengths=torch.tensor([3, 5]))
    t[T - 1] = float("-inf")
    with pytest.raises(ValueError, match=f"times must be finite.*-inf at sample 0, step {T - 1}"):
        layer(x_ok(), times=t, lengths=torch.tensor([4, 2]))


def test_times_bool(layer):
    with pytest.raises(TypeError, match="times must be a float32, float64 or integer tensor"):
        layer(x_ok(), times=torch.ones(B, T, dtype=torch.bool))


# -- lengths -------------------------------------------------------------------------------


def test_lengths_wrong_shape(layer):
    with pytest.raises(ValueError, match=r"Expected lengths of shape \(2,\) \(one per sequence\), got \(3,\)"):
        layer(x_ok(), lengths=torch.tensor([5, 5, 5]))


@pytest.mark.parametrize("bad", [[0, 5], [5, 6]])
def test_lengths_out_of_range(layer, bad):
    with pytest.raises(ValueError, match=r"lengths must be in \[1, 5\]"):
        layer(x_ok(), lengths=torch.tensor(bad))


def test_lengths_float(layer):
    with pytest.raises(TypeError, match="lengths must be an integer tensor, got dtype torch.float32"):
        layer(x_ok(), lengths=torch.tensor([5.0, 3.0]))


def test_lengths_list_is_accepted(layer):
    out, _ = layer(x_ok(), lengths=[5, 3])
    assert out[1, 3:].abs().max() == 0


def test_lengths_unbatched(layer):
    with pytest.raises(ValueError, match="only accepted for batched input"):
        layer(torch.randn(T, I), lengths=torch.tensor([3]))


# -- hx ------------------------------------------------------------------------------------


def test_hx_wrong_shape(layer):
    h = torch.zeros(2, B + 1, H)
    with pytest.raises(ValueError, match=r"Expected h_0 of shape \(2, 2, 4\), got \(2, 3, 4\)"):
        layer(x_ok(), (h, h))


def test_hx_not_a_pair(layer):
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h_0, c_0\)"):
        layer(x_ok(), torch.zeros(2, B, H))


def test_hx_dtype(layer):
    h = torch.zeros(2, B, H)
    with pytest.raises(TypeError, match="c_0 has dtype torch.float64 but input has dtype torch.float32"):
        layer(x_ok(), (h, h.double()))


def test_hx_wrong_shape_bidirectional():
    layer = PeepholeLSTM(I, H, bidirectional=True)
    h = torch.zeros(1, B, H)
    with pytest.raises(ValueError, match=r"Expected h_0 of shape \(2, 2, 4\)"):
        layer(torch.randn(T, B, I), (h, h))


@pytest.mark.skipif(not torch.backends.mps.is_available() and not torch.cuda.is_available(),
                    reason="needs a second device")
def test_device_mismatch(layer):
    dev = "cuda" if torch.cuda.is_available() else "mps"
    with pytest.raises(ValueError, match="device"):
        layer(x_ok().to(dev))


def test_times_on_meta_device_mismatch(layer):
    # a second device that every build has: the meta device
    with pytest.raises(ValueError, match="times is on device meta but input is on cpu"):
        layer(x_ok(), times=torch.zeros(B, T, device="meta"))
    h = torch.zeros(2, B, H)
    with pytest.raises(ValueError, match="c_0 is on device meta but input is on cpu"):
        layer(x_ok(), (h, torch.zeros(2, B, H, device="meta")))


# -- cells ---------------------------------------------------------------------------------


def test_cell_errors():
    cell = PhasedLSTMCell(I, H)
    with pytest.raises(ValueError, match=r"Expected input with 3 features"):
        cell(torch.randn(B, 7), time=0.0)
    with pytest.raises(ValueError, match=r"Expected input of shape \(batch, 3\) or \(3,\)"):
        cell(torch.randn(1, B, I), time=0.0)
    with pytest.raises(ValueError, match=r"Expected time as a number or a tensor of shape \(\) or \(2,\), got \(3,\)"):
        cell(torch.randn(B, I), time=torch.zeros(3))
    with pytest.raises(ValueError, match="time must be finite"):
        cell(torch.randn(B, I), time=float("nan"))
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'time'"):
        cell(torch.randn(B, I))
    h = torch.zeros(B, H + 1)
    with pytest.raises(ValueError, match=r"Expected h_0 of shape \(2, 4\), got \(2, 5\)"):
        cell(torch.randn(B, I), (h, h), time=0.0)
