"""Tasks from real and generated data, by name.

``get_task(name, **options)`` builds a :class:`Task` whose splits yield batches
``(x, times, lengths, y)``; see :data:`TASKS` for the names and :func:`task_options` for
what each accepts.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from phasedlstm._files import data_dir as _resolve
from phasedlstm.data.adding import adding_task
from phasedlstm.data.events import events_task, nmnist_sim_task, read_nmnist_folder
from phasedlstm.data.base import Batch, DataError, SequenceDataset, Task, windows
from phasedlstm.data.fetch import verify
from phasedlstm.data.frequency import frequency_task
from phasedlstm.data.images import image_task, load_images
from phasedlstm.data.motion import BASIC_MOTIONS_RATE_HZ, JAPANESE_VOWELS_RATE_HZ, load_watch_npz, watch_task
from phasedlstm.data.series import SeriesSet, read_table, read_ts, series_task, split_table

__all__ = ["Batch", "DataError", "SequenceDataset", "Task", "TASKS", "get_task", "task_options"]


def _missing(dataset: str, where: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"{dataset} not found in {where}. Fetch it with `phasedlstm data fetch {dataset}` "
        f"(or pass --data-dir to where it is)"
        + (", or pass --data-path to a folder with the four IDX files" if "mnist" in dataset else "")
    )


def _image_folder(dataset: str, data_dir_, data_path) -> Path:
    """The folder of the IDX files: --data-path as given (the user's own files), or the fetched
    copy, whose checksums are verified first."""
    if data_path is not None:
        return Path(data_path)
    folder = _resolve(data_dir_) / dataset
    if not folder.is_dir():
        raise _missing(dataset, folder)
    verify(dataset, data_dir_)
    return folder


def _images(dataset, view):
    def build(seed: int = 0, classes=None, val_fraction: float = 0.1, small: bool = False, perm_seed: int = 0,
              data_dir=None, data_path=None, prefix: str = "") -> Task:
        arrays = load_images(_image_folder(dataset, data_dir, data_path), prefix)
        name = {"mnist": "smnist", "fashion-mnist": "fashion"}[dataset]
        name = "psmnist" if view == "permuted" else f"{name}-{view}"
        return image_task(name, arrays, view, classes, val_fraction, small, seed, perm_seed)

    return build


def _frequency(condition):
    def build(seed: int = 0, n_train: int = 5000, n_val: int = 500, n_test: int = 500,
              time_feature: bool = False, fresh: bool = True) -> Task:
        return frequency_task(condition, seed, n_train, n_val, n_test, time_feature, fresh)

    return build


def _adding(seed: int = 0, length: int = 200, n_train: int = 10000, n_val: int = 1000, n_test: int = 1000,
            fresh: bool = False, design: str = "lecture") -> Task:
    return adding_task(length, seed, n_train, n_val, n_test, fresh, design)


def _nmnist_sim(seed: int = 0, n_train: int = 6000, n_test: int = 1000, val_fraction: float = 0.1,
                representation: str = "events", frame_ms: float = 30.0, max_events=None, time_feature: str = "none",
                data_dir=None) -> Task:
    images = load_images(_image_folder("mnist", data_dir, None))
    return nmnist_sim_task(images, seed, n_train, n_test, val_fraction=val_fraction, representation=representation,
                           frame_ms=frame_ms, max_events=max_events, time_feature=time_feature)


def _nmnist(seed: int = 0, val_fraction: float = 0.1, representation: str = "events", frame_ms: float = 30.0,
            max_events=None, time_feature: str = "none", data_path=None) -> Task:
    if data_path is None:
        raise DataError("nmnist reads your copy of N-MNIST: --data-path FOLDER (the folder holding Train/ and "
                        "Test/, one .bin file per sample in digit folders); it cannot be fetched here. "
                        "nmnist-sim simulates such streams from MNIST")
    return events_task("nmnist", read_nmnist_folder(data_path, "train"), read_nmnist_folder(data_path, "test"),
                       seed=seed, val_fraction=val_fraction, representation=representation, frame_ms=frame_ms,
                       max_events=max_events, time_feature=time_feature)


def _windowed(task: Task, window, stride) -> Task:
    """Every split cut into windows of ``window`` time units, ``stride`` apart (default: half a
    window); evaluation then scores each recording by its windows' mean log-probabilities."""
    if window is None:
        if stride is not None:
            raise DataError("--stride needs --window")
        return task
    stride = window / 2 if stride is None else stride
    if not (window > 0 and stride > 0):
        raise DataError(f"window and stride must be > 0, got {window} and {stride}")
    for name in ("train", "val", "test"):
        split = getattr(task, name)
        if len(split):
            setattr(task, name, windows(split, window, stride))
    task.info.update(window=window, stride=stride)
    return task


def _watch(seed: int = 0, downsample: int = 1, crop=None, test_subjects=None, val_subjects=None,
           drop: float = 0.0, time_feature: str = "none", window=None, stride=None, data_dir=None) -> Task:
    path = _resolve(data_dir) / "watch" / "watch.npz"
    if not path.is_file():
        raise _missing("watch", path.parent)
    verify("watch", data_dir)
    return _windowed(watch_task(load_watch_npz(path), seed, test_subjects, val_subjects, downsample, crop, drop,
                                time_feature), window, stride)


def _fetched_ts(dataset: str, problem: str, data_dir, rate_hz: float) -> tuple[SeriesSet, SeriesSet]:
    folder = _resolve(data_dir) / dataset
    files = [folder / f"{problem}_TRAIN.ts", folder / f"{problem}_TEST.ts"]
    if not all(f.is_file() for f in files):
        raise _missing(dataset, folder)
    verify(dataset, data_dir)
    return read_ts(files[0], rate_hz), read_ts(files[1], rate_hz)


def _basic_motions(seed: int = 0, val_fraction: float = 0.2, drop: float = 0.0, time_feature: str = "none",
                   window=None, stride=None, data_dir=None) -> Task:
    train, test = _fetched_ts("basic-motions", "BasicMotions", data_dir, BASIC_MOTIONS_RATE_HZ)
    return _windowed(series_task("basic-motions", train, test, seed=seed, val_fraction=val_fraction, drop=drop,
                                 time_feature=time_feature), window, stride)


def _japanese_vowels(seed: int = 0, val_fraction: float = 0.2, drop: float = 0.0, time_feature: str = "none",
                     window=None, stride=None, data_dir=None) -> Task:
    train, test = _fetched_ts("japanese-vowels", "JapaneseVowels", data_dir, JAPANESE_VOWELS_RATE_HZ)
    return _windowed(series_task("japanese-vowels", train, test, seed=seed, val_fraction=val_fraction, drop=drop,
                                 time_feature=time_feature), window, stride)


def _check_sums(files, sha256) -> None:
    """A run records its files' SHA-256 when it starts (the command line does): a file changed since
    then is refused when the run resumes or is evaluated, instead of training on other data."""
    from phasedlstm._files import sha256 as digest

    if sha256 is None:
        return
    for f, want in zip(files, sha256):
        if f is not None and want is not None and digest(Path(f)) != want:
            raise DataError(f"{f} has changed since this run started (its SHA-256 is not the one recorded in the "
                            f"run's configuration); train a new run on the new file")


def _file(path, what: str) -> Path:
    if path is None:
        raise DataError(f"this task needs {what}")
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file ({what})")
    return p


def _ts(seed: int = 0, train_file=None, test_file=None, val_fraction: float = 0.2, test_fraction: float = 0.3,
        drop: float = 0.0, time_feature: str = "none", missing: str = "auto", window=None, stride=None,
        sha256=None) -> Task:
    train = read_ts(_file(train_file, "--train-file, a .ts file of training series"))
    test = None if test_file is None else read_ts(_file(test_file, "--test-file"))
    _check_sums([train_file, test_file], sha256)
    return _windowed(series_task("ts", train, test, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction,
                                 drop=drop, time_feature=time_feature, missing=missing), window, stride)


def _table(seed: int = 0, file=None, id_column: str = "id", time_column: str = "time", label_column: str = "label",
           feature_columns=None, split_column=None, regression: bool = False, val_fraction: float = 0.2,
           test_fraction: float = 0.3, drop: float = 0.0, time_feature: str = "none", missing: str = "auto",
           window=None, stride=None, sha256=None) -> Task:
    data = read_table(_file(file, "--file, a CSV (or Parquet) table of observations"), id_column, time_column,
                      label_column, feature_columns, split_column, regression)
    _check_sums([file], sha256)
    parts = split_table(data) if split_column is not None else {"train": data, "val": None, "test": None}
    return _windowed(series_task("table", parts["train"], parts["test"], parts["val"], seed=seed,
                                 val_fraction=val_fraction, test_fraction=test_fraction, drop=drop,
                                 time_feature=time_feature, missing=missing), window, stride)


#: task name -> (builder, one-line description)
TASKS = {
    "smnist-rows": (_images("mnist", "rows"), "MNIST, 28 steps of 28 (one row per step)"),
    "smnist-pixels": (_images("mnist", "pixels"), "MNIST, 784 steps of 1 (one pixel per step)"),
    "psmnist": (_images("mnist", "permuted"), "MNIST, 784 steps of 1 in a fixed seeded permutation"),
    "fashion-rows": (_images("fashion-mnist", "rows"), "Fashion-MNIST, 28 steps of 28"),
    "fashion-pixels": (_images("fashion-mnist", "pixels"), "Fashion-MNIST, 784 steps of 1"),
    "freq-standard": (_frequency("standard"), "frequency discrimination, sampled every 1 ms (15-125 steps)"),
    "freq-highres": (_frequency("highres"), "frequency discrimination, sampled every 0.1 ms (150-1250 steps)"),
    "freq-async": (_frequency("async"), "frequency discrimination, 15-125 random sample times"),
    "freq-combo": (_frequency("combo"), "two superimposed frequencies, 100-1000 random sample times "
                                        "(the authors' distribution)"),
    "freq-combo-hard": (_frequency("combo-hard"), "freq-combo with negatives that have one period in range"),
    "adding": (_adding, "the adding problem, regression over T steps of 2 (T = --length)"),
    "watch": (_watch, "smartwatch IMU exercises, 6 channels at 50 Hz, 7 classes, split by subject"),
    "basic-motions": (_basic_motions, "BasicMotions, 6 channels x 100 at 10 Hz, 4 classes"),
    "japanese-vowels": (_japanese_vowels, "JapaneseVowels, 12 channels x 7-29 frames, 9 speakers"),
    "nmnist-sim": (_nmnist_sim, "N-MNIST-like event streams simulated from MNIST (three saccades on a 34 x 34 "
                                "event camera), one step per event or frames"),
    "nmnist": (_nmnist, "your copy of N-MNIST (--data-path), one step per event or frames"),
    "ts": (_ts, "your own series: a UEA/UCR .ts file (--train-file, optional --test-file)"),
    "table": (_table, "your own series: a long-format CSV/Parquet table, one row per observation (--file)"),
}


def _check_name(name) -> None:
    if name not in TASKS:
        import difflib

        close = difflib.get_close_matches(str(name).replace("_", "-"), list(TASKS), n=1, cutoff=0.5)
        raise DataError(f"unknown task {name!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                        + f" (the tasks: {', '.join(TASKS)}; `phasedlstm tasks` describes them)")


def task_options(name: str) -> dict:
    """The options task ``name`` accepts, with their defaults."""
    _check_name(name)
    builder = TASKS[name][0]
    return {k: p.default for k, p in inspect.signature(builder).parameters.items()}


def get_task(name: str, **options) -> Task:
    """Build task ``name``; unknown names and options are errors that list the valid ones."""
    valid = task_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise DataError(f"task {name!r} does not take {', '.join(unknown)}; it takes {', '.join(valid)}")
    return TASKS[name][0](**options)
