"""Event streams: N-MNIST's 40-bit files (written here, in its published layout), the nmnist-sim
simulation's determinism and statistics, the two representations, the embedding model, and sparse
inference equal to dense on an event model."""

import numpy as np
import pytest
import torch

from phasedlstm import cli
from phasedlstm.data.base import DataError
from phasedlstm.data.events import (
    ADDRESSES,
    EVENT,
    SENSOR,
    address,
    events_dataset,
    events_task,
    read_nmnist_file,
    read_nmnist_folder,
    simulate_saccades,
    write_nmnist_file,
)


def _events(n, seed=0, t_max=300_000):
    rng = np.random.default_rng(seed)
    ev = np.empty(n, dtype=EVENT)
    ev["x"], ev["y"] = rng.integers(0, SENSOR, n), rng.integers(0, SENSOR, n)
    ev["p"] = rng.integers(0, 2, n)
    ev["t"] = np.sort(rng.integers(0, t_max, n))
    return ev


def test_a_file_in_the_40_bit_format_reads_back_bit_for_bit(tmp_path):
    ev = _events(500)
    ev["t"][-1] = (1 << 23) - 1  # the largest 23-bit timestamp
    write_nmnist_file(tmp_path / "00001.bin", ev)
    assert (tmp_path / "00001.bin").stat().st_size == 5 * 500
    back = read_nmnist_file(tmp_path / "00001.bin")
    for k in ("x", "y", "p", "t"):
        np.testing.assert_array_equal(back[k], ev[k])


def test_the_bit_layout_is_n_mnists():
    """x, y, then polarity in the top bit of the third byte and the 23-bit µs timestamp below it."""
    raw = bytes([5, 33, 0x80 | 0x12, 0x34, 0x56])
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        Path(d, "a.bin").write_bytes(raw)
        ev = read_nmnist_file(Path(d, "a.bin"))
    assert (int(ev["x"][0]), int(ev["y"][0]), int(ev["p"][0]), int(ev["t"][0])) == (5, 33, 1, 0x123456)


@pytest.mark.parametrize("raw, message", [
    (b"", "no events"),
    (bytes(12), "12 bytes is not a whole number of 40-bit events"),
    (bytes([40, 3, 0, 0, 1]), r"event 0 has address \(40, 3\), outside the 34 x 34 sensor"),
])
def test_malformed_files_are_one_line_errors_naming_the_file(tmp_path, raw, message):
    (tmp_path / "x.bin").write_bytes(raw)
    with pytest.raises(DataError, match=message) as e:
        read_nmnist_file(tmp_path / "x.bin")
    assert "x.bin" in str(e.value) and "\n" not in str(e.value)


def test_folder_layout_labels_and_errors(tmp_path):
    for split, per in (("Train", 2), ("Test", 1)):
        for d in range(10):
            (tmp_path / split / str(d)).mkdir(parents=True)
            for k in range(per):
                write_nmnist_file(tmp_path / split / str(d) / f"{k:05d}.bin", _events(20 + d, seed=d * 10 + k))
    streams, labels = read_nmnist_folder(tmp_path, "train")
    assert len(streams) == 20 and labels.tolist() == [d for d in range(10) for _ in range(2)]
    assert len(streams[5]) == 22
    with pytest.raises(DataError, match="expected N-MNIST's layout"):
        read_nmnist_folder(tmp_path / "nowhere", "test")
    out = tmp_path / "run"
    rc = cli.main(["train", "--task", "nmnist", "--data-path", str(tmp_path), "--model", "phased", "--epochs", "1",
                   "--hidden-size", "8", "--out", str(out), "--no-progress"])
    assert rc == 0 and (out / "best.pt").exists() and (out / "inference.json").exists()
    # the deployed model's throughput on one stream: every way of feeding it, sparse and dense
    from phasedlstm.bench_events import _chunked, run_events

    r = run_events(out, chunks=(1, 7), samples=2, repeats=1, log=lambda *a: None)
    assert [row["feeding"] for row in r["rows"]] == ["chunks of 1", "chunks of 7", "Stream.push, one event per call"]
    assert all(row["sparse_events_per_s"] > 0 and row["dense_events_per_s"] > 0 for row in r["rows"])
    # fed in chunks, the model gives what it gives on the whole stream
    from phasedlstm.train import load_run_model

    _, task, model, _ = load_run_model(out)
    b = task.test[torch.tensor([0])]
    with torch.no_grad():
        whole = model.eval()(b.x, b.times, b.lengths)
        torch.testing.assert_close(_chunked(model, b.x[:, :int(b.lengths[0])], b.times[:, :int(b.lengths[0])], 5),
                                   whole, rtol=1e-4, atol=1e-5)


def test_nmnist_without_a_copy_says_where_to_point():
    from phasedlstm.data import get_task

    with pytest.raises(DataError, match="--data-path FOLDER"):
        get_task("nmnist")


def _digits(n, seed=0):
    """Stand-ins for MNIST digits: strokes on a 28 x 28 canvas."""
    rng = np.random.default_rng(seed)
    img = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        r, c = rng.integers(6, 12), rng.integers(6, 12)
        img[i, r:r + 12, c:c + 3] = 255
        img[i, r:r + 3, c:c + 10] = 200
    return img


def test_simulation_is_deterministic_per_seed_and_sample_whatever_its_batch():
    imgs = _digits(12)
    a = simulate_saccades(imgs, seed=3, batch=5)
    b = simulate_saccades(imgs, seed=3, batch=12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = simulate_saccades(imgs, seed=4)
    assert not all(np.array_equal(x["t"], y["t"]) for x, y in zip(a, c))


def test_simulation_statistics_are_those_documented():
    """Events per sample in the hundreds to thousands, ON and OFF balanced (the digit returns where
    it started), every address on the 34 x 34 field, times within the three 100 ms saccades, in order."""
    ev = simulate_saccades(_digits(40))
    counts = np.array([len(e) for e in ev])
    assert 200 < counts.min() and counts.max() < 10_000
    on = np.array([e["p"].mean() for e in ev])
    assert np.all(np.abs(on - 0.5) < 0.05)
    for e in ev:
        assert e["x"].max() < SENSOR and e["y"].max() < SENSOR
        assert 0 <= e["t"].min() and e["t"].max() < 300_000 and np.all(np.diff(e["t"]) >= 0)
    # the digit moves 6 pixels each way: the events cover more columns than the strokes' width
    assert max(np.ptp(e["x"]) for e in ev) >= 8


def test_representations_events_and_frames():
    ev = [_events(30, seed=1), _events(12, seed=2)]
    labels = np.array([3, 7])
    d = events_dataset(ev, labels)
    assert d.x.shape == (2, 30, 1) and d.lengths.tolist() == [30, 12]
    np.testing.assert_array_equal(d.x[1, :12, 0].numpy(), address(ev[1]).astype(np.float32))
    np.testing.assert_allclose(d.times[0].numpy(), ev[0]["t"] / 1000.0)
    assert address(ev[0]).max() < ADDRESSES
    f = events_dataset(ev, labels, "frames", frame_ms=50.0)
    assert f.x.shape[2] == ADDRESSES and f.x.shape[1] == int(max(e["t"].max() for e in ev) // 50_000) + 1
    assert f.x[0].sum() == 30 and f.x[1].sum() == 12
    k = int(ev[0]["t"][4] // 50_000)
    assert f.x[0, k, address(ev[0][4:5])[0]] >= 1
    dt = events_dataset(ev, labels, time_feature="dt", gap_ms=2.0)
    np.testing.assert_allclose(dt.x[0, 1:30, 1].numpy(), np.diff(ev[0]["t"] / 1000.0) / 2.0, rtol=1e-6)
    capped = events_dataset(ev, labels, max_events=10, seed=0)
    assert capped.lengths.tolist() == [10, 10] and np.all(np.diff(capped.times[0, :10].numpy()) >= 0)


def test_an_event_model_embeds_addresses_and_runs_sparse_as_dense():
    from phasedlstm.models import SequenceModel

    streams = simulate_saccades(_digits(6))
    task = events_task("t", (streams, np.arange(6) % 10), (streams[:3], np.arange(3)), val_fraction=0.0,
                       max_events=300)
    torch.manual_seed(0)
    m = SequenceModel("phased", task.input_size, 16, 10, proj_size=8, embedding=task.info["embedding"],
                      period_init=(0.0, 3.0), r_on=0.1).eval()
    assert isinstance(m.proj, torch.nn.Embedding) and m.proj.num_embeddings == ADDRESSES
    b = task.train[torch.arange(6)]
    with torch.no_grad():
        sparse = m(b.x, b.times, b.lengths)
        assert m.rnn.last_open_fraction is not None and m.rnn.last_open_fraction < 0.5
        m.rnn.sparse_inference = False
        dense = m(b.x, b.times, b.lengths)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)


def test_event_options_refused_where_they_do_not_apply():
    with pytest.raises(ValueError, match="time_feature dt applies to representation events"):
        events_task("t", ([_events(5)] * 4, np.zeros(4, int)), ([_events(5)], np.zeros(1, int)),
                    representation="frames", time_feature="dt")
    with pytest.raises(SystemExit, match="--max-events does not apply to task adding"):
        cli.main(["train", "--task", "adding", "--max-events", "10", "--out", "/nonexistent/x"])


def test_input_noise_leaves_the_embedded_address_alone():
    from phasedlstm.train import with_input_noise

    x = torch.zeros(2, 5, 2)
    x[..., 0] = torch.tensor([[3.0, 7, 9, 11, 0], [5, 6, 0, 0, 0]])
    noisy = with_input_noise(x, torch.tensor([4, 2]), 1.0, torch.Generator().manual_seed(0), skip=1)
    assert torch.equal(noisy[..., 0], x[..., 0])
    assert noisy[0, :4, 1].abs().min() > 0 and (noisy[1, 2:, 1] == 0).all()
