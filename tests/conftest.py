import os
import shutil
import tempfile

import pytest
import torch

# torch.compile's on-disk caches (FX graph, AOTAutograd) do not notice when a custom operator's fake
# implementation changes (pytorch/pytorch#160472): a cache left by another version of the kernels
# would replay graphs with the old saved-tensor shapes. The tests compile into a fresh folder.
_INDUCTOR_DIR = None
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _INDUCTOR_DIR = os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="phasedlstm-inductor-")


def pytest_sessionfinish(session, exitstatus):
    if _INDUCTOR_DIR is not None:
        shutil.rmtree(_INDUCTOR_DIR, ignore_errors=True)


# Which path a plain LSTM takes is measured at run time (phasedlstm.autotune): a test must not depend
# on the machine's speed, so the tests run with it off (subprocesses inherit the variable) and
# tests/test_autotune.py turns it on where it tests it.
os.environ["PHASEDLSTM_AUTOTUNE"] = "0"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true",
                     help="also run the tests marked slow (subprocess CLI runs, kill and resume, DDP, builds, "
                          "export, compile, the wheel, real data)")


def pytest_collection_modifyitems(config, items):
    """The fast tier by default: tests marked ``slow`` are deselected unless --slow is given."""
    if config.getoption("--slow"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


@pytest.fixture
def tune():
    """``tune(packed="0", split="units", ...)``: the fused kernels' tuning switches for this test
    (phasedlstm.fast.tuning), restored after it; flags as the environment variables spell them."""
    from contextlib import ExitStack

    from phasedlstm import fast

    def value(name, v):
        if name in ("packed", "running_rows") and isinstance(v, str):
            return v != "0"
        return int(v) if name == "kblock" else v

    with ExitStack() as stack:
        yield lambda **kw: stack.enter_context(fast.tuning(**{k: value(k, v) for k, v in kw.items()}))
