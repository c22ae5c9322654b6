"""`phasedlstm bench` runs and writes what it promises (no timing is asserted: speed is for the benchmark)."""

import json
import subprocess
import sys


def test_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "phasedlstm", "bench", "--shapes", "3,4,2,5;2,3,1,4", "--repeats", "1",
                        "--warmup", "0", "--no-memory", "--reference", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert {"torch", "threads", "cpu", "fused_kernels", "date"} <= set(data["config"])
    assert [row["shape"] for row in data["results"]] == [[3, 4, 2, 5], [2, 3, 1, 4]]
    labels = set(data["results"][0]["train"])
    assert {"torch.nn.LSTM", "lstm", "peephole", "phased", "layernorm", "phased (reference)", "GEMM bound"} <= labels
    assert "x torch" in r.stdout and "x bound" in r.stdout
    bad = subprocess.run([sys.executable, "-m", "phasedlstm", "bench", "--layers", "gru"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0 and "unknown layers ['gru']" in bad.stderr
