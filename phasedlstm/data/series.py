"""Your own series: UEA/UCR ``.ts`` files and long-format tables, read into tasks.

A set of series, as both readers return it (:class:`SeriesSet`), is per series its timestamps
(T_i,) float64, strictly increasing, its values (T_i, C) float32 with NaN where a channel was
not observed, and one label (a class name, or a number for regression).

- **``.ts``** (the sktime/aeon format of the UEA/UCR archive): univariate or multivariate, equal
  or variable length, ``?`` for a missing value, class labels (``@classLabel``) or regression
  targets (``@targetLabel``), and the ``@timeStamps true`` variant, whose values are
  ``(timestamp,value)`` pairs; the dimensions of one series may then be observed at different
  times, and the series is the union of their timestamps (NaN where a channel has no value).
  Without timestamps, a series' times are its step indices (0, 1, 2, ...), or the steps divided
  by ``rate_hz`` where the sampling rate is known.
- **Long format** (CSV, or Parquet where pyarrow is installed): one row per observation, with a
  column for the series id, one for the timestamp, one for the label (the same on every row of a
  series), optionally one for the split (``train``, ``val`` or ``test``) and the features (every
  other column, or those named). An empty cell, ``NaN`` or ``?`` is a channel not observed. Rows
  of one series may be interleaved with other series' but must come in time order; rows of one
  series at the same time are merged (each channel observed at most once).

Timestamps are numbers, or ISO 8601 datetimes (``2024-03-01T12:00:00.250``, with or without a
UTC offset; naive ones are taken as UTC), and every series' times are counted from its own first
observation: datetimes in seconds, computed from integer microseconds so that no precision is
lost however far from 1970 the clock is; numbers in their own unit, integers subtracted exactly
before they become float64.

Every malformed file is refused with one line that names the file, the line and what is wrong.
:func:`series_task` turns sets of series into a :class:`~phasedlstm.data.base.Task`: a seeded
validation part of the training series (and a seeded test part where no test series are given),
channels standardised on the training series' observed values, missing values set to 0 (the
channel's mean) with an indicator channel each where the training data has any, optional
dropping of observations, and optional time features for models without a time gate.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from phasedlstm.data.base import DataError, SequenceDataset, Task, padding, split_off
from phasedlstm.timescale import time_statistics

MISSING = {"", "?", "nan", "NaN", "NAN", "NA", "null"}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass
class SeriesSet:
    """Series read from a file: see the module docstring."""

    times: list  # per series (T_i,) float64, strictly increasing, from 0
    values: list  # per series (T_i, C) float32, NaN = not observed
    labels: np.ndarray  # (N,) str class names, or float64 targets
    channels: list  # C channel names
    source: str  # the file, for messages
    classes: list | None = None  # the class names a .ts header declares, in its order
    time_unit: str = "step"
    ids: list = field(default_factory=list)  # series ids (tables) or data line numbers (.ts)
    split: list | None = None  # per series "train", "val" or "test" (tables with a split column)

    def __len__(self) -> int:
        return len(self.values)

    @property
    def regression(self) -> bool:
        return self.labels.dtype.kind == "f"

    def subset(self, index) -> "SeriesSet":
        index = list(index)
        return SeriesSet([self.times[i] for i in index], [self.values[i] for i in index], self.labels[index],
                         self.channels, self.source, self.classes, self.time_unit, [self.ids[i] for i in index])


# -- timestamps ------------------------------------------------------------------------------------


def _parse_stamp(text: str):
    """A timestamp cell -> ("n", int or float) or ("d", integer microseconds since 1970 UTC), or None."""
    s = text.strip()
    try:
        return ("n", int(s))
    except ValueError:
        pass
    try:
        v = float(s)
    except ValueError:
        v = None
    if v is not None:
        return ("n", v) if math.isfinite(v) else None
    try:
        d = datetime.fromisoformat(s)
    except ValueError:
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)
    delta = d - _EPOCH
    return ("d", (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds)


def _relative(stamps: list, kinds: set, where: str) -> tuple[np.ndarray, str | None]:
    """Parsed stamps of one series -> times from its first stamp (float64) and the unit ("s" for
    datetimes, None for numbers). Integer stamps are subtracted as Python integers (exact)."""
    if len(kinds) > 1:
        raise DataError(f"{where}: timestamps mix numbers and datetimes")
    first = stamps[0]
    if "d" in kinds:
        return np.array([(s - first) / 1e6 for s in stamps], dtype=np.float64), "s"
    return np.array([s - first for s in stamps], dtype=np.float64), None


# -- .ts files ---------------------------------------------------------------------------------------

_PAIR = re.compile(r"\(([^(),]*),([^()]*)\)")
_FLAGS = ("timestamps", "missing", "univariate", "equallength")


def _flag(path, lineno, line) -> bool:
    parts = line.split()
    if len(parts) != 2 or parts[1].lower() not in ("true", "false"):
        raise DataError(f"{path}:{lineno}: expected '{parts[0]} true' or '{parts[0]} false', got {line!r}")
    return parts[1].lower() == "true"


def _header_int(path, lineno, line) -> int:
    parts = line.split()
    if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) < 1:
        raise DataError(f"{path}:{lineno}: expected '{parts[0]} N' with N >= 1, got {line!r}")
    return int(parts[1])


def _ts_value(text: str, path, lineno, dim) -> float:
    t = text.strip()
    if t in MISSING:
        return float("nan")
    try:
        v = float(t)
    except ValueError:
        raise DataError(f"{path}:{lineno}: dimension {dim + 1}: {t[:30]!r} is not a number (or ? for missing)") from None
    if not math.isfinite(v):
        raise DataError(f"{path}:{lineno}: dimension {dim + 1}: {t!r} is not finite (write ? for a missing value)")
    return v


def _ts_dimension(text, path, lineno, dim, stamped):
    """One dimension of a data line -> (stamps or None, values, kinds)."""
    text = text.strip()
    if stamped:
        pairs = _PAIR.findall(text)
        if not pairs or _PAIR.sub("", text).replace(",", "").strip():
            raise DataError(f"{path}:{lineno}: dimension {dim + 1}: @timeStamps true asks for (timestamp,value) "
                            f"pairs, got {text[:40]!r}")
        stamps, values, kinds = [], [], set()
        for t, v in pairs:
            p = _parse_stamp(t)
            if p is None:
                raise DataError(f"{path}:{lineno}: dimension {dim + 1}: {t.strip()!r} is not a timestamp (a number "
                                f"or an ISO 8601 datetime)")
            kinds.add(p[0])
            if stamps and p[1] <= stamps[-1]:
                raise DataError(f"{path}:{lineno}: dimension {dim + 1}: timestamps must increase, {t.strip()!r} "
                                f"follows {pairs[len(stamps) - 1][0].strip()!r}")
            stamps.append(p[1])
            values.append(_ts_value(v, path, lineno, dim))
        return stamps, values, kinds
    if "(" in text:
        raise DataError(f"{path}:{lineno}: dimension {dim + 1} holds (timestamp,value) pairs, but the header says "
                        f"@timeStamps false (or has no @timeStamps line)")
    if not text:
        raise DataError(f"{path}:{lineno}: dimension {dim + 1} is empty (an empty series)")
    return None, [_ts_value(v, path, lineno, dim) for v in text.split(",")], set()


def _split_outside_pairs(line: str) -> list[str]:
    """A data line of a file with timestamps split at the ':' outside (timestamp,value) pairs (a
    datetime's own ':' stays in its pair)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(line):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == ":" and depth == 0:
            parts.append(line[start:i])
            start = i + 1
    parts.append(line[start:])
    return parts


def read_ts(path, rate_hz: float | None = None) -> SeriesSet:
    """Read a ``.ts`` file; see the module docstring. ``rate_hz``: the sampling rate of a file
    without timestamps (times in seconds), or None (times are step indices)."""
    path = Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file (a .ts file is UTF-8 text)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    head: dict = {}
    classes = None
    target = False
    rows = []  # (lineno, dims, label text)
    in_data = False
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise DataError(f"{path}:{lineno}: expected a header line (@...) or @data before the series, "
                                f"got {line[:40]!r}")
            tag = line.split()[0].lower()
            if tag[1:] in _FLAGS:
                head[tag[1:]] = _flag(path, lineno, line)
            elif tag in ("@dimensions", "@serieslength"):
                head[tag[1:]] = _header_int(path, lineno, line)
            elif tag == "@classlabel":
                parts = line.split()
                if len(parts) < 2 or parts[1].lower() not in ("true", "false"):
                    raise DataError(f"{path}:{lineno}: expected '@classLabel true NAME NAME ...' or '@classLabel "
                                    f"false', got {line!r}")
                if parts[1].lower() == "true":
                    if len(parts) < 3:
                        raise DataError(f"{path}:{lineno}: @classLabel true lists no class names")
                    classes = parts[2:]
                    if len(set(classes)) != len(classes):
                        raise DataError(f"{path}:{lineno}: @classLabel lists a class twice")
            elif tag == "@targetlabel":
                target = _flag(path, lineno, line)
            elif tag == "@data":
                in_data = True
            continue
        rows.append((lineno, line))
    if not in_data:
        raise DataError(f"{path}: no @data line: not a .ts file")
    if not rows:
        raise DataError(f"{path}: no series after @data")
    if classes is None and not target:
        raise DataError(f"{path}: the header has neither '@classLabel true ...' nor '@targetLabel true': the series "
                        f"have no labels to learn")
    stamped = head.get("timestamps", False)
    n_dims = None
    times, values, labels, ids, units = [], [], [], [], set()
    for lineno, line in rows:
        *dims, label = _split_outside_pairs(line) if stamped else line.split(":")
        label = label.strip()
        if not dims:
            raise DataError(f"{path}:{lineno}: a series and its label are separated by ':', found none")
        if n_dims is None:
            n_dims = len(dims)
            for key, want in (("dimensions", head.get("dimensions")),
                              ("univariate", 1 if head.get("univariate") else None)):
                if want is not None and n_dims != want:
                    raise DataError(f"{path}:{lineno}: {n_dims} dimensions, but the header's @{key} says {want}"
                                    if key == "dimensions" else
                                    f"{path}:{lineno}: {n_dims} dimensions, but the header says @univariate true")
        elif len(dims) != n_dims:
            raise DataError(f"{path}:{lineno}: {len(dims)} dimensions, where the first series (line {rows[0][0]}) "
                            f"has {n_dims}")
        parsed = [_ts_dimension(d, path, lineno, i, stamped) for i, d in enumerate(dims)]
        if stamped:
            kinds = set().union(*(p[2] for p in parsed))
            if len(kinds) > 1:
                raise DataError(f"{path}:{lineno}: timestamps mix numbers and datetimes")
            union = sorted(set().union(*(p[0] for p in parsed)))
            at = {s: i for i, s in enumerate(union)}
            v = np.full((len(union), n_dims), np.nan, dtype=np.float32)
            for c, (st, vals, _) in enumerate(parsed):
                v[[at[s] for s in st], c] = vals
            t, unit = _relative(union, kinds, f"{path}:{lineno}")
            units.add(unit or "the file's unit")
        else:
            lengths = {len(p[1]) for p in parsed}
            if len(lengths) > 1:
                raise DataError(f"{path}:{lineno}: its dimensions have different lengths ({sorted(lengths)}); without "
                                f"timestamps each dimension of a series must have one value per step")
            v = np.array([p[1] for p in parsed], dtype=np.float32).T
            t = np.arange(len(v), dtype=np.float64) / (rate_hz or 1.0)
        if "missing" in head and not head["missing"] and np.isnan(v).any():
            raise DataError(f"{path}:{lineno}: a missing value (?), but the header says @missing false")
        if "serieslength" in head and head.get("equallength", True) and len(v) != head["serieslength"]:
            raise DataError(f"{path}:{lineno}: {len(v)} steps, but the header's @seriesLength says "
                            f"{head['serieslength']}")
        if np.isnan(v).all():
            raise DataError(f"{path}:{lineno}: every value is missing (an empty series)")
        if classes is not None:
            if label not in classes:
                raise DataError(f"{path}:{lineno}: class {label!r} is not among the header's classes "
                                f"({' '.join(classes)})")
        else:
            try:
                y = float(label)
            except ValueError:
                y = float("nan")
            if not math.isfinite(y):
                raise DataError(f"{path}:{lineno}: the target {label!r} is not a finite number (@targetLabel true)")
        times.append(t)
        values.append(v)
        labels.append(label)
        ids.append(lineno)
    if head.get("equallength") and len({len(v) for v in values}) > 1:
        first = next(i for i, v in enumerate(values) if len(v) != len(values[0]))
        raise DataError(f"{path}:{ids[first]}: {len(values[first])} steps where line {ids[0]} has {len(values[0])}, "
                        f"but the header says @equalLength true")
    unit = units.pop() if len(units) == 1 else ("s" if rate_hz else "step")
    y = np.array(labels, dtype=np.float64) if classes is None else np.array(labels, dtype=str)
    return SeriesSet(times, values, y, [f"dim_{i}" for i in range(n_dims)], str(path), classes, unit, ids)


# -- long-format tables ------------------------------------------------------------------------------

SPLITS = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}


def _table_rows(path: Path):
    """-> (header, iterator of (line number, cells)) for a CSV or Parquet file."""
    if path.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or give a CSV file") from None
        table = pq.read_table(path)
        header = table.column_names
        cols = [table.column(c).to_pylist() for c in header]

        def cells():
            for i, row in enumerate(zip(*cols)):
                yield i + 2, ["" if v is None else (v.isoformat() if hasattr(v, "isoformat") else str(v))
                              for v in row]

        return header, cells()
    try:
        f = open(path, newline="")
        f.read(1)
        f.seek(0)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file (expected CSV, or a .parquet file)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    reader = csv.reader(f)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: empty file (expected a header row of column names)") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise DataError(f"{path}:1: not readable CSV ({e})") from None

    def cells():
        with f:
            try:
                for row in reader:
                    yield reader.line_num, row
            except (csv.Error, UnicodeDecodeError) as e:
                raise DataError(f"{path}:{reader.line_num}: not readable CSV ({e})") from None

    return [h.strip() for h in header], cells()


def read_table(path, id_column: str, time_column: str, label_column: str, feature_columns=None,
               split_column: str | None = None, regression: bool = False) -> SeriesSet:
    """Read a long-format table; see the module docstring. ``feature_columns``: the feature
    columns (default: every column but id, time, label and split); ``regression``: labels are
    numbers to predict, not class names."""
    path = Path(path)
    header, rows = _table_rows(path)
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise DataError(f"{path}:1: the header names column(s) {dup} twice")
    named = {"id": id_column, "time": time_column, "label": label_column, "split": split_column}
    for role, col in named.items():
        if col is not None and col not in header:
            raise DataError(f"{path}:1: no {role} column {col!r}; the columns are {', '.join(header)}")
    special = {c for c in named.values() if c is not None}
    if feature_columns is None:
        feature_columns = [h for h in header if h not in special]
    else:
        feature_columns = list(feature_columns)
        for c in feature_columns:
            if c not in header:
                raise DataError(f"{path}:1: no feature column {c!r}; the columns are {', '.join(header)}")
            if c in special:
                raise DataError(f"{path}:1: {c!r} is the id, time, label or split column; it cannot be a feature")
    if not feature_columns:
        raise DataError(f"{path}:1: no feature columns (the columns are {', '.join(header)})")
    col = {h: i for i, h in enumerate(header)}
    fi = [col[c] for c in feature_columns]
    series: dict = {}  # id -> dict(stamps, values, lines, label, split, kinds)
    for lineno, row in rows:
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{path}:{lineno}: {len(row)} cells, the header has {len(header)} columns")
        sid = row[col[id_column]].strip()
        if not sid:
            raise DataError(f"{path}:{lineno}: the id column {id_column!r} is empty")
        stamp = _parse_stamp(row[col[time_column]])
        if stamp is None:
            raise DataError(f"{path}:{lineno}: time {row[col[time_column]].strip()[:30]!r} is not a number or an ISO "
                            f"8601 datetime")
        vals = []
        for c, i in zip(feature_columns, fi):
            t = row[i].strip()
            if t in MISSING:
                vals.append(float("nan"))
                continue
            try:
                v = float(t)
            except ValueError:
                raise DataError(f"{path}:{lineno}: column {c!r}: {t[:30]!r} is not a number (leave the cell empty "
                                f"for a value not observed)") from None
            if not math.isfinite(v):
                raise DataError(f"{path}:{lineno}: column {c!r}: {t!r} is not finite (leave the cell empty for a "
                                f"value not observed)")
            vals.append(v)
        label = row[col[label_column]].strip()
        split = None
        if split_column is not None:
            s = row[col[split_column]].strip().lower()
            if s not in SPLITS:
                raise DataError(f"{path}:{lineno}: split {row[col[split_column]].strip()!r} is not train, val or test")
            split = SPLITS[s]
        s = series.get(sid)
        if s is None:
            s = series[sid] = {"stamps": [], "values": [], "lines": [], "label": label, "split": split,
                               "kinds": set(), "first": lineno}
        if label != s["label"]:
            raise DataError(f"{path}:{lineno}: series {sid!r} has label {label!r} here and {s['label']!r} on line "
                            f"{s['first']}; a series has one label")
        if split != s["split"]:
            raise DataError(f"{path}:{lineno}: series {sid!r} is in split {split!r} here and {s['split']!r} on line "
                            f"{s['first']}; a series is in one split")
        s["kinds"].add(stamp[0])
        if len(s["kinds"]) > 1:
            raise DataError(f"{path}:{lineno}: series {sid!r}'s timestamps mix numbers and datetimes")
        if s["stamps"] and stamp[1] < s["stamps"][-1]:
            raise DataError(f"{path}:{lineno}: series {sid!r} goes back in time ({row[col[time_column]].strip()!r} "
                            f"after the time of line {s['lines'][-1]}); the rows of a series must be in time order")
        if s["stamps"] and stamp[1] == s["stamps"][-1]:  # the same instant: merge the channels
            prev = s["values"][-1]
            clash = [feature_columns[k] for k, v in enumerate(vals) if not math.isnan(v) and not math.isnan(prev[k])]
            if clash:
                raise DataError(f"{path}:{lineno}: series {sid!r} has a second value of {clash[0]!r} at the time of "
                                f"line {s['lines'][-1]}")
            s["values"][-1] = [p if math.isnan(v) else v for p, v in zip(prev, vals)]
            continue
        s["stamps"].append(stamp[1])
        s["values"].append(vals)
        s["lines"].append(lineno)
    if not series:
        raise DataError(f"{path}: no rows after the header")
    times, values, labels, ids, splits, units = [], [], [], [], [], set()
    for sid, s in series.items():
        v = np.array(s["values"], dtype=np.float32)
        keep = ~np.isnan(v).all(axis=1)
        if not keep.any():
            raise DataError(f"{path}:{s['first']}: series {sid!r} has no observed value (an empty series)")
        stamps = [st for st, k in zip(s["stamps"], keep) if k]
        t, unit = _relative(stamps, s["kinds"], f"{path}:{s['first']}")
        units.add(unit or "the file's unit")
        if not s["label"]:
            raise DataError(f"{path}:{s['first']}: series {sid!r} has no label (the {label_column!r} column is empty)")
        times.append(t)
        values.append(v[keep])
        labels.append(s["label"])
        ids.append(sid)
        splits.append(s["split"])
    if regression:
        try:
            y = np.array([float(v) for v in labels], dtype=np.float64)
        except ValueError:
            bad = next(v for v in labels if not _is_number(v))
            raise DataError(f"{path}: the label {bad!r} is not a number (a regression table's labels are targets)") from None
    else:
        y = np.array(labels, dtype=str)
    return SeriesSet(times, values, y, feature_columns, str(path), None, units.pop() if len(units) == 1 else "mixed",
                     ids, splits if split_column is not None else None)


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def split_table(data: SeriesSet) -> dict:
    """A table with a split column -> {"train": SeriesSet, "val": ... or None, "test": ... or None}."""
    out = {}
    for name in ("train", "val", "test"):
        index = [i for i, s in enumerate(data.split) if s == name]
        out[name] = data.subset(index) if index else None
    if out["train"] is None:
        raise DataError(f"{data.source}: the split column names no series 'train'")
    return out


def write_ts(path, data: SeriesSet, problem: str = "series") -> None:
    """Write series as a ``.ts`` file with timestamps (each observed value with its time), the
    inverse of :func:`read_ts` for data that :func:`read_table` read."""
    lines = [f"@problemName {problem}", "@timeStamps true", f"@missing {'true' if any(np.isnan(v).any() for v in data.values) else 'false'}",
             f"@univariate {'true' if len(data.channels) == 1 else 'false'}", f"@dimensions {len(data.channels)}",
             "@equalLength false"]
    if data.regression:
        lines.append("@targetLabel true")
    else:
        lines.append("@classLabel true " + " ".join(data.classes or sorted(set(data.labels.tolist()))))
    lines.append("@data")
    for t, v, y in zip(data.times, data.values, data.labels):
        dims = []
        for c in range(v.shape[1]):
            obs = ~np.isnan(v[:, c])
            dims.append(",".join(f"({ti!r},{np.format_float_positional(vi, unique=True, trim='-')})"
                                 for ti, vi in zip(t[obs].tolist(), v[obs, c])))  # (float32's shortest form)
        lines.append(":".join(dims) + f":{y}")
    Path(path).write_text("\n".join(lines) + "\n")


# -- series -> task --------------------------------------------------------------------------------

MISSING_MODES = ("auto", "zero", "mask")
TIME_FEATURES = ("none", "t", "dt")


def drop_observations(times: list, values: list, drop: float, seed: int) -> tuple[list, list]:
    """Drop each observation (a time step with its channels) with probability ``drop``, seeded,
    keeping at least two per series (one if it has one); the others keep their timestamps."""
    if not 0.0 <= drop < 1.0:
        raise ValueError(f"drop must be in [0, 1), got {drop}")
    if drop == 0:
        return times, values
    rng = np.random.default_rng([seed, 7])
    out_t, out_v = [], []
    for t, v in zip(times, values):
        keep = rng.random(len(t)) >= drop
        if keep.sum() < min(2, len(t)):
            keep[: min(2, len(t))] = True
        out_t.append(t[keep])
        out_v.append(v[keep])
    return out_t, out_v


def _pad(times, values):
    lengths = np.array([len(t) for t in times], dtype=np.int64)
    N, T, C = len(values), int(lengths.max()), values[0].shape[1]
    x = np.full((N, T, C), np.nan, dtype=np.float32)
    tt = np.zeros((N, T), dtype=np.float64)
    for i, (t, v) in enumerate(zip(times, values)):
        x[i, : len(t)] = v
        tt[i, : len(t)] = t
        tt[i, len(t):] = t[-1]
    return x, tt, lengths


class SeriesEncoder:
    """Series -> padded model inputs, with what the training series decide: each channel's mean and
    s.d. over its observed values (missing values become 0, the mean), the indicator channels of
    ``missing`` ("auto": where the training series have missing values), and the time scale of the
    ``time_feature`` channel ("t": time since the start over the median duration; "dt": the gap
    since the previous observation over the median gap)."""

    def __init__(self, missing: str = "auto", time_feature: str = "none", channels=None, source: str = "series"):
        if time_feature not in TIME_FEATURES:
            raise ValueError(f"time_feature must be one of {TIME_FEATURES}, got {time_feature!r}")
        if missing not in MISSING_MODES:
            raise ValueError(f"missing must be one of {MISSING_MODES}, got {missing!r}")
        self.missing, self.time_feature, self.names, self.source = missing, time_feature, channels, source

    def fit(self, times: list, values: list) -> "SeriesEncoder":
        try:
            self.scale = time_statistics(times)
        except ValueError:  # single observations only: the time features count in the data's own unit
            self.scale = {"median_gap": 1.0, "median_duration": 1.0}
        tr_values = np.concatenate(values)
        self.mean = np.nanmean(tr_values, axis=0)
        self.std = np.nanstd(tr_values, axis=0)
        unseen = np.isnan(self.mean)
        if unseen.any():
            names = self.names or [f"dim_{i}" for i in range(len(self.mean))]
            raise DataError(f"{self.source}: channel(s) {[names[i] for i in np.flatnonzero(unseen)]} have no "
                            f"observed value in the training series")
        self.std[~(self.std > 0)] = 1.0
        self.mask = self.missing == "mask" or (self.missing == "auto" and bool(np.isnan(tr_values).any()))
        return self

    @property
    def channels(self) -> list:
        names = list(self.names or [f"dim_{i}" for i in range(len(self.mean))])
        return names + ([f"{c} observed" for c in names] if self.mask else []) + (
            [self.time_feature] if self.time_feature != "none" else [])

    def transform(self, times: list, values: list, y) -> SequenceDataset:
        C = len(self.mean)
        if not len(times):
            return SequenceDataset(np.zeros((0, 1, len(self.channels)), np.float32), np.zeros((0, 1)),
                                   np.zeros(0, np.int64), y)
        if any(v.shape[1] != C for v in values):
            bad = next(v.shape[1] for v in values if v.shape[1] != C)
            raise DataError(f"{self.source}: series of {bad} channels, the training series have {C}")
        x, tt, lengths = _pad(times, values)
        pad = padding(lengths, x.shape[1])
        observed = ~np.isnan(x)
        x = np.where(observed, (x - self.mean) / self.std, 0.0).astype(np.float32)
        chans = [x]
        if self.mask:
            chans.append(np.where(pad[..., None], 0.0, observed).astype(np.float32))
        if self.time_feature == "t":
            f = tt / self.scale["median_duration"]
            chans.append(np.where(pad, 0.0, f)[..., None].astype(np.float32))
        elif self.time_feature == "dt":
            f = np.diff(tt, axis=1, prepend=tt[:, :1]) / self.scale["median_gap"]
            chans.append(np.where(pad, 0.0, f)[..., None].astype(np.float32))
        return SequenceDataset(np.concatenate(chans, axis=2), tt, lengths, y)


def series_task(name: str, train: SeriesSet, test: SeriesSet | None = None, val: SeriesSet | None = None,
                seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.3, drop: float = 0.0,
                time_feature: str = "none", missing: str = "auto") -> Task:
    """Sets of series -> a Task (see the module docstring).

    ``test``: the test series, or None for a seeded ``test_fraction`` of ``train``; ``val``: the
    validation series, or None for a seeded ``val_fraction`` of the training series; ``drop``:
    drop that fraction of the observations of every split (seeded, timestamps kept);
    ``time_feature``: append "t" (time since the series' start, over the median duration) or
    "dt" (the gap since the previous observation, over the median gap) as a channel;
    ``missing``: "zero" (missing values become the channel's mean), "mask" (and an indicator
    channel per channel), "auto" (mask where the training series have missing values).
    """
    encoder = SeriesEncoder(missing, time_feature, train.channels, train.source)  # (checks both first)
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    for other in (test, val):
        if other is not None and len(other.channels) != len(train.channels):
            raise DataError(f"{other.source}: {len(other.channels)} channels, the training series "
                            f"({train.source}) have {len(train.channels)}")
        if other is not None and other.regression != train.regression:
            raise DataError(f"{other.source}: its labels are {'targets' if other.regression else 'classes'}, the "
                            f"training series' ({train.source}) are not")
    if train.regression:
        classes = []
    else:
        classes = list(train.classes) if train.classes else sorted(set(train.labels.tolist()))
        for other in (test, val):
            if other is None:
                continue
            unknown = sorted(set(other.labels.tolist()) - set(classes))
            if unknown:
                line = other.ids[int(np.flatnonzero(other.labels == unknown[0])[0])]
                where = f"{other.source}:{line}" if isinstance(line, int) else f"{other.source} (series {line!r})"
                raise DataError(f"{where}: class {unknown[0]!r} is not a class of the training series "
                                f"({train.source}: {', '.join(classes)})")
    parts = {"train": train}
    if test is None:
        keep, held = split_off(len(train), test_fraction, seed + 1)
        parts = {"train": train.subset(keep), "test": train.subset(held)}
    else:
        parts["test"] = test
    if val is None:
        keep, held = split_off(len(parts["train"]), val_fraction, seed)
        parts["val"] = parts["train"].subset(held)
        parts["train"] = parts["train"].subset(keep)
    else:
        parts["val"] = val
    for k in ("train", "val", "test"):
        if len(parts[k]) == 0 and k != "val":
            raise DataError(f"{train.source}: no {k} series (raise --{'test' if k == 'test' else 'val'}-fraction or "
                            f"give more series)")
    index = {c: i for i, c in enumerate(classes)}
    raw = {}
    for k, s in parts.items():
        t, v = drop_observations(s.times, s.values, drop, seed + {"train": 0, "val": 1, "test": 2}[k])
        y = s.labels.astype(np.float32) if train.regression else np.array([index[c] for c in s.labels], dtype=np.int64)
        raw[k] = (t, v, y)
    enc = encoder.fit(*raw["train"][:2])
    splits = {k: enc.transform(t, v, y) for k, (t, v, y) in raw.items()}
    channels, mask, scale = enc.channels, enc.mask, enc.scale
    mean, std = enc.mean, enc.std
    info = {"seed": seed, "train_file": train.source, "test_file": None if test is None else test.source,
            "val_fraction": None if val is not None else val_fraction,
            "test_fraction": None if test is not None else test_fraction, "drop": drop,
            "time_feature": time_feature, "missing_indicators": mask, "classes": classes, "channels": channels,
            "time_scale": scale, "scaling": {"mean": mean.tolist(), "std": std.tolist()}}
    return Task(name=name, num_classes=len(classes), metric="mse" if train.regression else "accuracy",
                time_unit=train.time_unit, info=info, **splits)
