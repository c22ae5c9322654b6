"""`phasedlstm bench` runs and writes what it promises (no timing is asserted: speed is for the benchmark)."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "phasedlstm", "bench", "--shapes", "3,4,2,5;2,3,1,4;2,3,1,4,ps,2bi",
                        "--repeats", "1", "--warmup", "0", "--no-memory", "--reference", "--sparse-hidden", "8",
                        "--sparse-steps", "20", "--stream-hidden", "8", "--run", "none", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert {"torch", "threads", "cpu", "fused_kernels", "date", "peak_gflops"} <= set(data["config"])
    assert [row["shape"] for row in data["results"]] == [[3, 4, 2, 5], [2, 3, 1, 4], [2, 3, 1, 4]]
    assert data["results"][2]["per_sample_times"] and data["results"][2]["two_layer_bidirectional"]
    assert "GFLOP/s" in r.stdout and "2-layer bidirectional" in r.stdout
    # the sparse section: 8 cases at H = 8 (B 1 / 32, shared / per-sample, r_on 0.05 / 0.2), open fractions measured
    assert len(data["sparse"]) == 8 and all(0 <= c["open_fraction"] <= 1 for c in data["sparse"])
    assert {c["r_on"] for c in data["sparse"]} == {0.05, 0.2} and "speed-up" in r.stdout
    assert [row["H"] for row in data["stream"]] == [8] and "Stream.push (phased)" in data["stream"][0]["us"]
    labels = set(data["results"][0]["train"])
    assert {"torch.nn.LSTM", "lstm", "peephole", "phased", "layernorm", "phased (reference)", "GEMM bound"} <= labels
    assert "x torch" in r.stdout and "x bound" in r.stdout
    bad = subprocess.run([sys.executable, "-m", "phasedlstm", "bench", "--layers", "gru"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0 and "unknown layers ['gru']" in bad.stderr
    for args, msg in ((["--shapes", "3,4,2"], "B,T,I,H"), (["--shapes", "3,4,2,5,xx"], "B,T,I,H"),
                      (["--sparse-hidden", "a"], "--sparse-hidden"), (["--sparse-steps", "0"], "--sparse-steps")):
        bad = subprocess.run([sys.executable, "-m", "phasedlstm", "bench", *args], capture_output=True, text=True,
                             timeout=120)
        assert bad.returncode != 0 and msg in bad.stderr, (args, bad.stderr)


def test_the_shape_grid_is_seeded_bounded_and_measures_every_layer():
    from phasedlstm.bench_grid import REPORTED, forward_gflop, grid_points, measure, summary

    a, b = grid_points(12, seed=3, max_gflop=0.5), grid_points(12, seed=3, max_gflop=0.5)
    assert a == b and len(a) == 12 + len(REPORTED) and a != grid_points(12, seed=4, max_gflop=0.5)
    assert all(forward_gflop(p["B"], p["T"], p["I"], p["H"], p["layers"]) <= 0.5 for p in a[:12])
    assert [(p["B"], p["T"], p["I"], p["H"], p["layers"]) for p in a[12:]] == REPORTED
    row = measure({"B": 2, "T": 5, "I": 3, "H": 8, "layers": 2, "per_sample": True}, repeats=1, warmup=0)
    for mode in ("train", "infer"):
        assert set(row[mode]["ratio"]) == {"lstm", "peephole", "phased", "layernorm"}
        assert all(v > 0 for v in row[mode]["ratio"].values())
    s = summary([row], ["lstm", "phased"])
    assert set(s) == {"train/lstm", "train/phased", "infer/lstm", "infer/phased"}
    assert s["train/lstm"]["worst_at"].startswith("B=2 T=5 I=3 H=8 2L ps")
