"""Your own series: the .ts and long-format readers, their errors, series -> task, the
time-scale-aware initialisation and its invariance to the time unit."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from phasedlstm.data import DataError, get_task
from phasedlstm.data.series import drop_observations, read_table, read_ts, series_task, write_ts
from phasedlstm.timescale import auto_time_init, time_statistics

HEAD = "@problemName T\n@timeStamps false\n@missing false\n@univariate false\n@dimensions 2\n" \
       "@equalLength false\n@classLabel true A B\n@data\n"


def _ts(tmp_path, text, name="T.ts"):
    f = tmp_path / name
    f.write_text(text)
    return f


# -- .ts ------------------------------------------------------------------------------------------


def test_read_ts_multivariate_variable_length(tmp_path):
    s = read_ts(_ts(tmp_path, "# a comment\n" + HEAD + "1,2,3:4,5,6:A\n7,8:1,1:B\n"))
    assert len(s) == 2 and s.classes == ["A", "B"] and s.labels.tolist() == ["A", "B"]
    np.testing.assert_array_equal(s.values[0], [[1, 4], [2, 5], [3, 6]])
    np.testing.assert_array_equal(s.times[1], [0, 1])
    assert s.time_unit == "step"
    s = read_ts(_ts(tmp_path, HEAD + "1,2,3:4,5,6:A\n", "R.ts"), rate_hz=4.0)
    np.testing.assert_array_equal(s.times[0], [0, 0.25, 0.5])
    assert s.time_unit == "s"


def test_read_ts_missing_values_and_targets(tmp_path):
    text = HEAD.replace("@missing false", "@missing true") + "1,?,3:4,5,?:A\n"
    v = read_ts(_ts(tmp_path, text)).values[0]
    assert np.isnan(v[1, 0]) and np.isnan(v[2, 1]) and v[2, 0] == 3
    text = "@univariate true\n@targetLabel true\n@data\n1,2,3:0.5\n4,5:-2\n"
    s = read_ts(_ts(tmp_path, text, "reg.ts"))
    assert s.regression and s.labels.tolist() == [0.5, -2.0]


def test_read_ts_timestamps_union_of_dimensions(tmp_path):
    """@timeStamps true: each dimension has its own times; the series is their union, NaN where a
    channel was not observed, counted from the first observation."""
    text = HEAD.replace("@timeStamps false", "@timeStamps true").replace("@missing false", "@missing true")
    s = read_ts(_ts(tmp_path, text + "(10,1),(12,2),(15,3):(12,7),(20,8):B\n"))
    np.testing.assert_array_equal(s.times[0], [0, 2, 5, 10])
    v = s.values[0]
    np.testing.assert_array_equal(v[:, 0][~np.isnan(v[:, 0])], [1, 2, 3])
    np.testing.assert_array_equal(v[:, 1][~np.isnan(v[:, 1])], [7, 8])
    assert np.isnan(v[0, 1]) and np.isnan(v[3, 0])
    # ISO datetimes: seconds from the first, exact to the microsecond
    text2 = text + "(2024-01-01T00:00:00,1),(2024-01-01T00:00:00.000001,2):(2024-01-01T00:01:00,3):A\n"
    s = read_ts(_ts(tmp_path, text2, "D.ts"))
    np.testing.assert_array_equal(s.times[0], [0.0, 1e-6, 60.0])
    assert s.time_unit == "s"


@pytest.mark.parametrize("body, header_change, message", [
    ("1,2:3,4:A\n1,2:B\n", None, "T.ts:10: 1 dimensions, where the first series (line 9) has 2"),
    ("1,2:3,4:A\n:1,2:B\n", None, "T.ts:10: dimension 1 is empty"),
    ("1,2:3,4:C\n", None, "T.ts:9: class 'C' is not among the header's classes (A B)"),
    ("1,2:3:A\n", None, "T.ts:9: its dimensions have different lengths ([1, 2])"),
    ("1,x:3,4:A\n", None, "T.ts:9: dimension 1: 'x' is not a number"),
    ("1,?:3,4:A\n", None, "T.ts:9: a missing value (?), but the header says @missing false"),
    ("1,2:3,4:A\n", ("@univariate false", "@univariate true"), "2 dimensions, but the header says @univariate true"),
    ("1,2:3,4:A\n", ("@dimensions 2", "@dimensions 3"), "T.ts:9: 2 dimensions, but the header's @dimensions says 3"),
    ("1,2:3,4:A\n1,2,3:3,4,5:B\n", ("@equalLength false", "@equalLength true"),
     "T.ts:10: 3 steps where line 9 has 2, but the header says @equalLength true"),
    ("(1,2):(1,3):A\n", None, "holds (timestamp,value) pairs, but the header says @timeStamps false"),
    ("(1,2),(1,3):(1,3):A\n", ("@timeStamps false", "@timeStamps true"), "timestamps must increase"),
    ("(2,2),(1,3):(1,3):A\n", ("@timeStamps false", "@timeStamps true"), "timestamps must increase, '1' follows '2'"),
    ("1,2:3,4:A\n", ("@classLabel true A B", "@classLabel false"), "neither '@classLabel true ...' nor"),
    ("?,?:?,?:A\n", ("@missing false", "@missing true"), "T.ts:9: every value is missing (an empty series)"),
    ("", None, "no series after @data"),
])
def test_read_ts_malformed_files_name_file_and_line(tmp_path, body, header_change, message):
    head = HEAD if header_change is None else HEAD.replace(*header_change)
    with pytest.raises(DataError) as e:
        read_ts(_ts(tmp_path, head + body))
    assert message in str(e.value) and str(tmp_path / "T.ts") in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_test_label_names_the_test_file_and_line(tmp_path):
    tr = read_ts(_ts(tmp_path, HEAD.replace("A B", "A B C") + "1,2:3,4:A\n1,2:3,4:B\n5,6:7,8:A\n", "TR.ts"))
    tr.classes = None  # as a file that declares only the classes it has
    te = read_ts(_ts(tmp_path, HEAD.replace("A B", "A B C") + "1,2:3,4:A\n1,2:3,4:C\n", "TE.ts"))
    tr.labels = np.array(["A", "B", "A"])
    with pytest.raises(DataError, match=r"TE\.ts:10: class 'C' is not a class of the training series"):
        series_task("ts", tr, te)


# -- tables -----------------------------------------------------------------------------------------

TABLE = """id,time,label,a,b
s1,0.0,x,1.0,
s2,5,y,2.0,3.0
s1,0.5,x,,2.0
s1,0.5,x,4.0,
s2,6,y,?,1.0
s1,2.0,x,5.0,6.0
"""


def test_read_table_interleaved_series_merged_rows_and_missing(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text(TABLE)
    s = read_table(f, "id", "time", "label")
    assert s.ids == ["s1", "s2"] and s.labels.tolist() == ["x", "y"] and s.channels == ["a", "b"]
    np.testing.assert_array_equal(s.times[0], [0.0, 0.5, 2.0])
    np.testing.assert_array_equal(s.times[1], [0.0, 1.0])
    np.testing.assert_array_equal(s.values[0][1], [4.0, 2.0])  # the two rows at 0.5 merged
    assert np.isnan(s.values[0][0, 1]) and np.isnan(s.values[1][1, 0])
    s = read_table(f, "id", "time", "label", feature_columns=["b"])
    assert s.channels == ["b"]  # s1 at 0.0 has no b: no observation; its times count from 0.5
    np.testing.assert_array_equal(s.times[0], [0.0, 1.5])
    np.testing.assert_array_equal(s.values[0][:, 0], [2.0, 6.0])


def test_read_table_int64_nanoseconds_and_datetimes_exact(tmp_path):
    """Per-series origins: integer timestamps are subtracted exactly (1 ns apart near 1.7e18 stays
    1 ns), datetimes to the microsecond whatever their offset."""
    f = tmp_path / "t.csv"
    f.write_text("id,time,label,v\n"
                 "a,1700000000000000000,p,1\na,1700000000000000001,p,2\na,1700000000000000003,p,3\n"
                 "b,2024-03-01T12:00:00+02:00,q,1\nb,2024-03-01T10:00:00.5Z,q,2\nb,2024-03-01T10:00:01.000001,q,3\n")
    s = read_table(f, "id", "time", "label")
    np.testing.assert_array_equal(s.times[0], [0.0, 1.0, 3.0])
    np.testing.assert_array_equal(s.times[1], [0.0, 0.5, 1.000001])


@pytest.mark.parametrize("body, message", [
    ("s1,1,x,1\ns1,0,x,2\n", "t.csv:3: series 's1' goes back in time ('0' after the time of line 2)"),
    ("s1,1,x,1\ns1,1,x,2\n", "t.csv:3: series 's1' has a second value of 'v' at the time of line 2"),
    ("s1,1,x,1\ns1,2,y,2\n", "t.csv:3: series 's1' has label 'y' here and 'x' on line 2"),
    ("s1,1,x,abc\n", "t.csv:2: column 'v': 'abc' is not a number"),
    ("s1,1,x,inf\n", "t.csv:2: column 'v': 'inf' is not finite"),
    ("s1,1,x\n", "t.csv:2: 3 cells, the header has 4 columns"),
    ("s1,yesterday,x,1\n", "t.csv:2: time 'yesterday' is not a number or an ISO 8601 datetime"),
    ("s1,1,x,\n", "t.csv:2: series 's1' has no observed value (an empty series)"),
    ("s1,1,,1\n", "series 's1' has no label"),
    (",1,x,1\n", "t.csv:2: the id column 'id' is empty"),
    ("s1,1,x,1\ns1,2024-01-01,x,2\n", "t.csv:3: series 's1''s timestamps mix numbers and datetimes"),
    ("", "t.csv: no rows after the header"),
])
def test_read_table_malformed_rows_name_file_and_line(tmp_path, body, message):
    f = tmp_path / "t.csv"
    f.write_text("id,time,label,v\n" + body)
    with pytest.raises(DataError) as e:
        read_table(f, "id", "time", "label")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_read_table_columns_checked(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("id,time,label,v\ns1,1,x,1\n")
    with pytest.raises(DataError, match=r"t\.csv:1: no time column 'when'; the columns are id, time, label, v"):
        read_table(f, "id", "when", "label")
    with pytest.raises(DataError, match="no feature column 'w'"):
        read_table(f, "id", "time", "label", ["w"])
    f.write_text("id,time,label,split,v\ns1,1,x,training,1\n")
    with pytest.raises(DataError, match="split 'training' is not train, val or test"):
        read_table(f, "id", "time", "label", split_column="split")
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match="empty file"):
        read_table(tmp_path / "e.csv", "id", "time", "label")


def test_table_round_trips_through_ts(tmp_path):
    """read_table -> write_ts -> read_ts gives the same series: times, values (NaN included), labels."""
    f = tmp_path / "t.csv"
    f.write_text(TABLE)
    a = read_table(f, "id", "time", "label")
    write_ts(tmp_path / "t.ts", a)
    b = read_ts(tmp_path / "t.ts")
    assert a.labels.tolist() == b.labels.tolist() and b.channels == ["dim_0", "dim_1"]
    for ta, tb, va, vb in zip(a.times, b.times, a.values, b.values):
        np.testing.assert_array_equal(ta, tb)
        np.testing.assert_array_equal(va, vb)


# -- series -> task ----------------------------------------------------------------------------------


def _synthetic(n=40, gap=0.01, seconds=2.0, seed=0, unit=1.0, channels=2):
    """Series of known time scale: observations every ``gap`` (times scaled by ``unit``), a label by
    frequency."""
    rng = np.random.default_rng(seed)
    rows = ["id,time,label," + ",".join(f"c{k}" for k in range(channels))]
    steps = int(round(seconds / gap))
    for i in range(n):
        c = i % 2
        for k in range(steps - int(rng.integers(0, steps // 4))):
            t = k * gap
            vals = [math.sin(2 * math.pi * (1 + 2 * c) * t + k2) + 0.1 * rng.standard_normal() for k2 in range(channels)]
            rows.append(f"s{i},{t * unit!r},{'ab'[c]}," + ",".join(f"{v:.5f}" for v in vals))
    return "\n".join(rows) + "\n"


def test_series_task_splits_standardises_and_masks(tmp_path):
    f = tmp_path / "t.csv"
    text = _synthetic()
    lines = text.splitlines()
    lines[5] = ",".join(lines[5].split(",")[:-1] + [""])  # one missing value in c1
    f.write_text("\n".join(lines) + "\n")
    t = get_task("table", file=str(f), seed=3)
    assert (len(t.train), len(t.val), len(t.test)) == (22, 6, 12)
    assert t.input_size == 4 and t.info["missing_indicators"]  # c0, c1, and their indicators
    valid = torch.arange(t.train.x.shape[1])[None, :] < t.train.lengths[:, None]
    x = t.train.x[valid]
    assert abs(float(x[:, 0].mean())) < 1e-4 and abs(float(x[:, 0].std()) - 1) < 1e-2
    assert set(torch.unique(x[:, 2:]).tolist()) <= {0.0, 1.0} and float(x[:, 3].min()) == 0.0
    same = get_task("table", file=str(f), seed=3)
    assert torch.equal(same.test.x, t.test.x)
    other = get_task("table", file=str(f), seed=4)
    assert not torch.equal(other.test.x[:5], t.test.x[:5])
    assert get_task("table", file=str(f), missing="zero").input_size == 2


def test_drop_is_seeded_and_keeps_timestamps():
    rng = np.random.default_rng(0)
    times = [np.sort(rng.uniform(0, 10, n)) for n in (50, 80, 3)]
    values = [rng.standard_normal((len(t), 2)).astype(np.float32) for t in times]
    a = drop_observations(times, values, 0.5, seed=1)
    b = drop_observations(times, values, 0.5, seed=1)
    c = drop_observations(times, values, 0.5, seed=2)
    for ta, tb, t0, va, v0 in zip(a[0], b[0], times, a[1], values):
        np.testing.assert_array_equal(ta, tb)
        keep = np.isin(t0, ta)
        assert keep.sum() == len(ta) >= 2
        np.testing.assert_array_equal(v0[keep], va)
    assert 20 < len(a[0][1]) < 60 and not np.array_equal(a[0][1], c[0][1])


def test_time_feature_counts_in_the_data_scale(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text(_synthetic(gap=0.25))
    t = get_task("table", file=str(f), time_feature="dt")
    assert t.input_size == 3
    np.testing.assert_allclose(t.train.x[0, 1:5, 2].numpy(), 1.0)  # dt over the median gap


# -- the time-scale-aware initialisation ---------------------------------------------------------------


def test_auto_time_init_ranges_on_known_scale():
    times = [np.arange(0, 10, 0.02) for _ in range(5)] + [np.arange(0, 30, 0.02)]
    a = auto_time_init(times)
    assert a["time_scale"] == pytest.approx(0.02)
    assert a["median_duration"] == pytest.approx(9.98)
    assert a["period_init"][0] == pytest.approx(math.log(2))
    assert a["period_init"][1] == pytest.approx(math.log(9.98 / 4 / 0.02))
    assert a["r_on"] == 0.25 and a["median_observations"] == 500  # 125 of 500 observations
    # short sequences: the longest period is at least 8 gaps; padded input with lengths
    t = torch.arange(6, dtype=torch.float64).expand(3, 6) * 1e-3
    a = auto_time_init(t, torch.tensor([6, 4, 2]))
    assert a["time_scale"] == pytest.approx(1e-3) and a["period_init"][1] == pytest.approx(math.log(8))
    assert a["r_on"] == 1.0  # 4 observations: open throughout the period's triangle
    assert auto_time_init([np.arange(50.0)] * 3)["r_on"] == 1.0
    assert auto_time_init([np.arange(5000.0)] * 3)["r_on"] == 0.05  # long sequences: the authors' r_on
    with pytest.raises(ValueError, match="no two observations"):
        time_statistics([np.zeros(1), np.zeros(1)])


def _train_table(tmp_path, name, text, epochs=2):
    from phasedlstm.cli import main

    f = tmp_path / f"{name}.csv"
    f.write_text(text)
    out = tmp_path / name
    assert main(["train", "--task", "table", "--file", str(f), "--epochs", str(epochs), "--hidden-size", "16",
                 "--batch-size", "8", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    return out


def test_same_data_in_seconds_and_milliseconds_trains_the_same_model(tmp_path):
    """--period-init auto (the default): the timestamps count in their median gap, so the unit
    of the file does not change the trained model: the same metrics, the same time gates."""
    from phasedlstm.train import load_run_model

    runs = {unit: _train_table(tmp_path, name, _synthetic(n=24, gap=0.01, unit=unit, seed=1))
            for unit, name in ((1.0, "s"), (1000.0, "ms"))}
    metrics = {}
    for u, r in runs.items():  # every column but the seconds an epoch took
        rows = list(csv.DictReader(open(r / "metrics.csv")))
        metrics[u] = [{k: v for k, v in row.items() if "seconds" not in k} for row in rows]
    assert metrics[1.0] == metrics[1000.0] and len(metrics[1.0]) == 2
    derived = {u: json.loads((r / "config.json").read_text())["derived"] for u, r in runs.items()}
    assert derived[1000.0]["time_scale"] == pytest.approx(1000 * derived[1.0]["time_scale"])
    assert derived[1.0]["period_init"] == pytest.approx(derived[1000.0]["period_init"])
    gates = []
    for u, r in runs.items():
        _, task, model, _ = load_run_model(r)
        model.eval()
        b = task.test[torch.arange(4)]
        gates.append(model.rnn.time_gates(b.times / model.time_scale))
    torch.testing.assert_close(gates[0], gates[1], rtol=0, atol=1e-5)


def test_resuming_on_a_changed_file_is_refused(tmp_path):
    from phasedlstm.train import train

    out = _train_table(tmp_path, "run", _synthetic(n=12), epochs=1)
    (tmp_path / "run.csv").write_text(_synthetic(n=12, seed=5))
    with pytest.raises(DataError, match="has changed since this run started"):
        train(None, out, resume=True, progress=False, extra_epochs=1, log=lambda *a: None)


def test_cli_period_init_auto_or_two_numbers(tmp_path):
    from phasedlstm.cli import main

    f = tmp_path / "t.csv"
    f.write_text(_synthetic(n=12))
    base = ["train", "--task", "table", "--file", str(f), "--epochs", "1", "--hidden-size", "8", "--no-progress"]
    with pytest.raises(SystemExit, match="two numbers A B .* or auto, got 1"):
        main(base + ["--period-init", "1", "--out", str(tmp_path / "a")])
    assert main(base + ["--period-init", "-3", "1", "--out", str(tmp_path / "b")]) == 0
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg["rnn_options"]["period_init"] == [-3.0, 1.0] and "derived" not in cfg
    with pytest.raises(SystemExit, match="--file does not apply to task ts"):
        main(["train", "--task", "ts", "--file", str(f), "--out", str(tmp_path / "c")])


# -- windows and scoring recordings by their windows -----------------------------------------------------


def test_windows_cut_by_time_and_keep_timestamps():
    from phasedlstm.data.base import SequenceDataset, windows

    t = np.zeros((2, 12))
    t[0] = np.arange(12) * 0.5  # 0 .. 5.5
    t[1, :3] = [0.0, 0.7, 1.1]
    x = np.arange(24, dtype=np.float32).reshape(2, 12, 1)
    ds = SequenceDataset(x, t, [12, 3], [1, 0])
    w = windows(ds, 2.0, 1.5)
    assert w.group.tolist() == [0, 0, 0, 0, 1]  # starts 0, 1.5, 3.0, and the last 3.5-5.5; the short one whole
    np.testing.assert_array_equal(w.times[0, :4].numpy(), [0.0, 0.5, 1.0, 1.5])
    np.testing.assert_array_equal(w.times[1, :4].numpy(), [1.5, 2.0, 2.5, 3.0])
    np.testing.assert_array_equal(w.times[3, :w.lengths[3]].numpy(), [3.5, 4.0, 4.5, 5.0, 5.5])
    np.testing.assert_array_equal(w.x[3, :5, 0].numpy(), x[0, 7:12, 0])
    assert w.lengths.tolist() == [4, 4, 4, 5, 3] and w.y.tolist() == [1, 1, 1, 1, 0]
    assert float(w.times[4, 4]) == 1.1  # padding repeats the last valid timestamp
    with pytest.raises(ValueError, match="finite and > 0"):
        windows(ds, 0.0, 1.0)


def test_evaluate_scores_recordings_by_mean_log_probability():
    """Three windows of one recording: two lean weakly to class 0, one strongly to class 1; the
    mean of log-probabilities picks class 1, and the recording counts once."""
    from phasedlstm.data.base import SequenceDataset
    from phasedlstm.models import cross_entropy, log_softmax
    from phasedlstm.train import evaluate

    class Logits(torch.nn.Module):
        def forward(self, x, times, lengths):
            return x[:, 0, :]

        def loss(self, out, y):
            return cross_entropy(out, y)

    logits = torch.tensor([[0.2, 0.0], [0.2, 0.0], [0.0, 5.0], [3.0, 0.0]])
    ds = SequenceDataset(logits[:, None, :].numpy(), np.zeros((4, 1)), [1] * 4, [1, 1, 1, 1], group=[7, 7, 7, 9])
    loss, acc = evaluate(Logits(), ds)
    assert acc == 0.5  # recording 7 right (class 1), recording 9 wrong
    mean7 = log_softmax(logits[:3]).mean(0, keepdim=True)
    want = (cross_entropy(mean7, torch.tensor([1])) + cross_entropy(logits[3:], torch.tensor([1]))) / 2
    assert loss == pytest.approx(float(want))
    ds.group = None
    assert evaluate(Logits(), ds)[1] == 0.25  # window by window


def test_window_option_of_the_tasks(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text(_synthetic(n=12, gap=0.01, seconds=2.0))
    t = get_task("table", file=str(f), window=0.5, stride=0.25)
    assert t.train.group is not None and int(t.train.lengths.max()) <= 51  # (the last window holds both ends)
    assert len(torch.unique(t.test.group)) == len(get_task("table", file=str(f)).test)
    with pytest.raises(DataError, match="--stride needs --window"):
        get_task("table", file=str(f), stride=0.25)
