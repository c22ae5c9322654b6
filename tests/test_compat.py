"""Code written for torch.nn.LSTM keeps working with the classes swapped: torch's exception classes,
its constructor checks and initialisation, whole-model saving under torch.load's defaults, higher and
batched derivatives on the default (fused) path, and the promises a fresh process relies on."""

import io
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import phasedlstm
from phasedlstm import (LSTM, LayerNormLSTM, LayerNormLSTMCell, LSTMCell, PeepholeLSTM, PeepholeLSTMCell,
                        PhasedLSTM, PhasedLSTMCell, fast)

LAYERS = [LSTM, PeepholeLSTM, PhasedLSTM, LayerNormLSTM]
CELLS = [LSTMCell, PeepholeLSTMCell, PhasedLSTMCell, LayerNormLSTMCell]
ROOT = Path(__file__).resolve().parents[1]
needs_kernels = pytest.mark.skipif(not fast.load(), reason=f"fused kernels unavailable: {fast.unavailable_reason()}")


# -- exceptions: torch's classes, our messages ---------------------------------------------------

@pytest.mark.parametrize("cls", LAYERS)
def test_argument_errors_are_raised_with_torchs_exception_classes(cls):
    m = cls(3, 5, num_layers=2)
    x = torch.randn(7, 4, 3)
    wrong_state = (torch.zeros(2, 7, 5), torch.zeros(2, 7, 5))  # batch 7 where the input has 4
    for call in (lambda: m(x, wrong_state),                      # torch: RuntimeError
                 lambda: m(torch.randn(0, 4, 3)),                # torch: RuntimeError
                 lambda: m(torch.randn(7, 4, 2))):               # torch: RuntimeError
        with pytest.raises(RuntimeError):
            call()
        with pytest.raises(ValueError):  # what callers of earlier versions catch
            call()
    with pytest.raises(RuntimeError, match=r"Expected h_0 of shape \(2, 4, 5\), got \(2, 7, 5\)"):
        m(x, wrong_state)
    for exc in (ValueError, TypeError):  # torch: ValueError for a dtype mismatch
        with pytest.raises(exc, match="dtype torch.float64"):
            m(x.double())


@pytest.mark.parametrize("cls", CELLS)
def test_cell_errors_are_raised_with_torchs_exception_classes(cls):
    cell = cls(3, 5)
    kw = {"time": 0.0} if cls is PhasedLSTMCell else {}
    with pytest.raises(RuntimeError, match="3 features"):  # torch: RuntimeError from the kernel
        cell(torch.randn(4, 2), **kw)
    with pytest.raises(ValueError):  # torch: ValueError for a 3-D input
        cell(torch.randn(2, 4, 3), **kw)


@pytest.mark.parametrize("cls", LAYERS + CELLS)
@pytest.mark.parametrize("bias", [0, 1, "True", None])
def test_bias_must_be_a_bool(cls, bias):
    with pytest.raises(TypeError, match="bias must be a bool"):
        cls(3, 5, bias=bias)


@pytest.mark.parametrize("cls", LAYERS)
def test_constructor_checks_match_torchs_classes(cls):
    for kwargs, exc in (({"hidden_size": 0}, ValueError), ({"hidden_size": 2.0}, TypeError),
                        ({"num_layers": 0}, ValueError), ({"dropout": 1.5}, ValueError),
                        ({"dropout": "0.1"}, ValueError), ({"batch_first": 1}, TypeError)):
        args = {"input_size": 3, "hidden_size": 5, **kwargs}
        with pytest.raises(exc):
            nn.LSTM(**args)
        with pytest.raises(exc):
            cls(**args)


# -- initialisation and saving ------------------------------------------------------------------

@pytest.mark.parametrize("ours, theirs", [(LSTM, nn.LSTM), (LSTMCell, nn.LSTMCell)])
def test_default_initialisation_is_torchs(ours, theirs):
    """Same seed, same parameters: code that seeds and builds its model gets torch's numbers."""
    kw = {"num_layers": 2, "bidirectional": True} if ours is LSTM else {}
    torch.manual_seed(3)
    a = theirs(4, 6, **kw)
    torch.manual_seed(3)
    b = ours(4, 6, **kw)
    for (n, p), (m, q) in zip(a.named_parameters(), b.named_parameters()):
        assert n == m and torch.equal(p, q), n


class RNNModel(nn.Module):
    """The shape of pytorch/examples' word_language_model: embedding, LSTM, dropout, decoder."""

    def __init__(self, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.2):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = rnn_type(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        self.nhid, self.nlayers = nhid, nlayers
        initrange = 0.1
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        return self.decoder(self.drop(output)), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))


def _train_word_lm(rnn_type, steps=6):
    """The example's loop: seeded model, repackaged state, clip_grad_norm_, plain SGD; -> losses, model."""
    torch.manual_seed(1111)
    model = RNNModel(rnn_type, 50, 16, 16, 2)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 50, (35 * steps + 1, 4), generator=g)
    hidden, losses = model.init_hidden(4), []
    model.train()
    for i in range(steps):
        x, y = data[i * 35:(i + 1) * 35], data[i * 35 + 1:(i + 1) * 35 + 1]
        hidden = tuple(h.detach() for h in hidden)
        model.zero_grad()
        out, hidden = model(x, hidden)
        loss = nn.functional.cross_entropy(out.view(-1, 50), y.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-20)
        losses.append(loss.item())
    return losses, model


def test_word_language_model_gives_torchs_losses_and_reloads_with_torch_load_defaults(tmp_path):
    want, _ = _train_word_lm(nn.LSTM)
    got, model = _train_word_lm(LSTM)  # the layer's own default initialisation
    assert got == pytest.approx(want, rel=1e-5)
    with open(tmp_path / "model.pt", "wb") as f:
        torch.save(model, f)
    # torch.load's default weights_only=True; the user's own classes are the user's to allow, ours are not
    with torch.serialization.safe_globals([RNNModel, nn.Embedding, nn.Dropout, nn.Linear]):
        with open(tmp_path / "model.pt", "rb") as f:
            loaded = torch.load(f)
    loaded.rnn.flatten_parameters()
    loaded.eval()
    model.eval()
    x = torch.randint(0, 50, (10, 3))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, loaded.init_hidden(3))[0], model(x, model.init_hidden(3))[0])


@pytest.mark.parametrize("m", [LSTM(3, 4, 2), PeepholeLSTM(3, 4, proj_size=2), PhasedLSTM(3, 4, bidirectional=True),
                               LayerNormLSTM(3, 4), PhasedLSTMCell(3, 4), LayerNormLSTMCell(3, 4)],
                         ids=lambda m: type(m).__name__)
def test_whole_layers_load_with_weights_only(m):
    f = io.BytesIO()
    torch.save(m, f)
    f.seek(0)
    loaded = torch.load(f)  # weights_only=True by default
    assert type(loaded) is type(m)
    for (n, p), (_, q) in zip(m.named_parameters(), loaded.named_parameters()):
        assert torch.equal(p, q), n


# -- derivatives on the default path ------------------------------------------------------------

def _layer_pair(cls):
    torch.manual_seed(0)
    kw = {"period_init": (0.0, 1.0)} if cls is PhasedLSTM else {}  # periods of 1-3 steps: gates that open
    ref = cls(3, 5, num_layers=2, dtype=torch.float64, impl="reference", **kw)
    fused = cls(3, 5, num_layers=2, dtype=torch.float64, **kw)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, 3, dtype=torch.float64, generator=g)
    times = torch.rand(3, 6, dtype=torch.float64, generator=g).mul(0.7).cumsum(1)
    return x, times, torch.tensor([6, 4, 2])


@needs_kernels
@pytest.mark.parametrize("cls", LAYERS)
def test_hessian_vector_products_on_the_default_path_equal_the_reference(cls):
    """Gradient penalty / MAML: a gradient built with create_graph=True, differentiated again."""
    x, times, lengths = _inputs()
    results = []
    for m in _layer_pair(cls):
        xi = x.clone().requires_grad_()
        out, (h, c) = m(xi, times=times, lengths=lengths)
        (gx,) = torch.autograd.grad((out.pow(2).sum() + h.sum() + c.sum()), xi, create_graph=True)
        penalty = gx.pow(2).sum()
        results.append([gx.detach()] + list(torch.autograd.grad(penalty, [xi] + list(m.parameters()),
                                                                 allow_unused=True)))
    for a, b in zip(*results):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-10)


@needs_kernels
@pytest.mark.parametrize("cls", LAYERS)
def test_batched_gradients_on_the_default_path_equal_the_reference(cls):
    """is_grads_batched=True (what jacobian(vectorize=True) uses) equals one gradient per vector."""
    x, times, lengths = _inputs()
    ref, fused = _layer_pair(cls)
    xi = x.clone().requires_grad_()
    out, _ = fused(xi, times=times, lengths=lengths)
    v = torch.randn(4, *out.shape, dtype=torch.float64)
    (batched,) = torch.autograd.grad(out, xi, v, is_grads_batched=True)
    out_ref, _ = ref(xi, times=times, lengths=lengths)
    for k in range(4):
        (one,) = torch.autograd.grad(out_ref, xi, v[k], retain_graph=True)
        torch.testing.assert_close(batched[k], one, rtol=1e-9, atol=1e-12)


@needs_kernels
def test_functional_hessian_and_vectorised_jacobian_of_a_phased_lstm():
    ref, fused = _layer_pair(PhasedLSTM)
    x, times, _ = _inputs()
    x = x[:3, :1]
    fns = [lambda xx, m=m: m(xx, times=times[:1, :3])[0].sum() for m in (ref, fused)]
    torch.testing.assert_close(torch.autograd.functional.hessian(fns[1], x),
                               torch.autograd.functional.hessian(fns[0], x), rtol=1e-8, atol=1e-10)
    jac = [torch.autograd.functional.jacobian(lambda xx, m=m: m(xx, times=times[:1, :3])[0], x, vectorize=True)
           for m in (ref, fused)]
    torch.testing.assert_close(jac[1], jac[0], rtol=1e-9, atol=1e-12)


# -- fresh processes: what a third-party user runs ---------------------------------------------

def _python(code, env=None, cwd=None):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, **(env or {})}, cwd=cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@needs_kernels
@pytest.mark.slow
def test_exported_program_loads_after_import_in_a_fresh_process_at_batch_equal_to_steps(tmp_path):
    """torch.export.load needs the kernels' operators registered: `import phasedlstm` does it (the
    program was saved by this process, whose kernels are built); B = T runs (no shape guard)."""
    for cls in LAYERS:
        class Wrapped(nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn = cls(3, 6, batch_first=True)

            def forward(self, x, times, lengths):
                return self.rnn(x, times=times, lengths=lengths)[0]

        model = Wrapped().eval()
        B, T = torch.export.Dim("B", min=1, max=1024), torch.export.Dim("T", min=2, max=100000)
        args = (torch.randn(4, 9, 3), torch.rand(4, 9, dtype=torch.float64).cumsum(1), torch.tensor([9, 5, 3, 1]))
        ep = torch.export.export(model, args, dynamic_shapes={"x": {0: B, 1: T}, "times": {0: B, 1: T},
                                                              "lengths": {0: B}})
        path = tmp_path / f"{cls.__name__}.pt2"
        torch.export.save(ep, path)
        cases = []
        for n in (2, 7, 20):
            x, t = torch.randn(n, n, 3), torch.rand(n, n, dtype=torch.float64).cumsum(1)
            lengths = torch.arange(n, 0, -1)
            with torch.no_grad():
                cases.append((x, t, lengths, model(x, t, lengths)))
        torch.save(cases, tmp_path / f"{cls.__name__}.cases")
        _python(f"""
            import torch, phasedlstm
            program = torch.export.load({str(path)!r}).module()
            for x, t, lengths, want in torch.load({str(tmp_path / f"{cls.__name__}.cases")!r}):
                torch.testing.assert_close(program(x, t, lengths), want, rtol=1e-6, atol=1e-7)
            """)


@needs_kernels
@pytest.mark.slow
def test_compiled_fullgraph_call_as_the_first_call_of_a_process():
    """torch.compile(fullgraph=True) where the kernels still have to be loaded when tracing starts
    (the state a process is in before anything loaded them)."""
    out = _python("""
        import torch, phasedlstm
        from phasedlstm import fast
        fast._state["loaded"] = False  # as if nothing had loaded the kernels yet
        for cls in (phasedlstm.LSTM, phasedlstm.PhasedLSTM, phasedlstm.LayerNormLSTM):
            torch.manual_seed(0)
            m = cls(3, 5, batch_first=True)
            x = torch.randn(2, 4, 3)
            got = torch.compile(m, fullgraph=True)(x)[0]
            torch.testing.assert_close(got, m(x)[0])
        print("loaded", fast._state["loaded"])
        """, env={"TORCHINDUCTOR_CACHE_DIR": os.environ.get("TORCHINDUCTOR_CACHE_DIR", "")})
    assert "loaded True" in out


@needs_kernels
@pytest.mark.slow
def test_a_wheel_carries_the_kernels_and_builds_them_from_a_plain_install(tmp_path):
    """`pip wheel .` gives a wheel with the kernels' source; installed (not editable) into a fresh
    environment that has torch, the fused path builds from it and equals the reference."""
    import shutil

    src = tmp_path / "src"  # (a copy: setuptools writes build/ and *.egg-info beside the sources it builds)
    shutil.copytree(ROOT / "phasedlstm", src / "phasedlstm", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(wheels), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = wheels.glob("phasedlstm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"phasedlstm/csrc/{p.name}" for p in fast.sources()} <= set(names)  # every .cpp and .h
    # a fresh virtual environment: torch (and ninja) from this one through a .pth, which makes its
    # directory importable without this checkout's editable install; the wheel unpacked as pip does
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    site = next(env_dir.glob("lib/python*/site-packages"))
    here = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "torch").is_dir())
    (site / "torch-from-outside.pth").write_text(here + "\n")
    zipfile.ZipFile(wheel).extractall(site)
    code = """
        import torch, phasedlstm
        from phasedlstm import fast, LSTM
        assert phasedlstm.__file__.startswith(%r), phasedlstm.__file__
        assert fast.load(), fast.unavailable_reason()
        torch.manual_seed(0)
        ref = LSTM(3, 8, impl="reference")
        fused = LSTM(3, 8, impl="fast")
        fused.load_state_dict(ref.state_dict())
        x = torch.randn(5, 2, 3)
        torch.testing.assert_close(fused(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)
        print("fused ok")
        """ % str(site)
    env = {**os.environ, "PHASEDLSTM_EXT_DIR": str(tmp_path / "ext"),  # a build of its own, from the wheel
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    r = subprocess.run([str(env_dir / "bin" / "python"), "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=900, env=env, cwd=tmp_path)
    assert r.returncode == 0 and "fused ok" in r.stdout, r.stdout + r.stderr


def test_the_package_exports_its_error_classes():
    assert issubclass(phasedlstm.InputError, ValueError) and issubclass(phasedlstm.InputError, RuntimeError)
    assert issubclass(phasedlstm.InputTypeError, TypeError) and issubclass(phasedlstm.InputTypeError, ValueError)


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_jit_trace_works_with_its_defaults(cls, mode):
    """torch.jit.trace (which the jit.script error names) records the reference loop's operators: its
    own check (check_trace, a second invocation compared) passes and the trace equals eager."""
    import warnings

    torch.manual_seed(0)
    m = getattr(cls(3, 5, batch_first=True), mode)()
    x, times = torch.randn(2, 7, 3), torch.rand(2, 7, dtype=torch.float64).cumsum(1)

    class WithTimes(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = m

        def forward(self, x, times):
            return self.rnn(x, times=times)[0]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(WithTimes(), (x, times))
    with torch.no_grad():
        torch.testing.assert_close(traced(x, times), m(x, times=times)[0], rtol=1e-5, atol=1e-5)
