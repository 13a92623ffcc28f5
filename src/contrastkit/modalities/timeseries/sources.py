"""Time-series sources: UCR/UEA ``.ts`` files, numpy arrays, and aeon's bundled data sets.

Every reader returns a :class:`TimeSeriesSource` holding the whole set as one float32 array
``x`` of shape (N, C, T) — N series, C channels (dimensions), T time steps. Missing values
(``?`` in a ``.ts`` file) and the tail of series shorter than the longest are NaN; the TS2Vec
encoder treats NaN time steps as absent (Yue et al., AAAI 2022, Sec. 3 and the official code).

The ``.ts`` format (sktime/aeon, https://www.timeseriesclassification.com): ``#`` comment
lines, ``@key value`` header lines up to ``@data``, then one series per line: the values of
each dimension comma-separated, dimensions separated by ``:``, and the class label last when
``@classLabel true``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contrastkit.core.errors import DataError

SPLITS = ("train", "test")
# "%" is the ARFF comment mark; a few .ts files (aeon's UnitTest) use it in the header.
_COMMENT_MARKS = ("#", "%")


@dataclass(frozen=True)
class TimeSeriesSource:
    """A whole time-series set in memory.

    Attributes:
        x: float32 (N, C, T); NaN marks missing values and the padding of shorter series.
        y: int64 (N,) class indices into ``class_names``, or None for an unlabeled set.
        class_names: the name of class k at position k (as the file spells it), or None.
        name: what the set is called in logs and tables ("GunPoint_TRAIN", a file stem).
    """

    x: np.ndarray
    y: np.ndarray | None
    class_names: list[str] | None
    name: str

    def __post_init__(self) -> None:
        if self.x.ndim != 3 or self.x.dtype != np.float32:
            raise DataError(
                f"TimeSeriesSource '{self.name}' needs a float32 array (N, C, T); got "
                f"{self.x.dtype} of shape {self.x.shape}."
            )
        if self.y is not None and (self.y.shape != (self.x.shape[0],) or self.y.dtype != np.int64):
            raise DataError(
                f"TimeSeriesSource '{self.name}': labels must be int64 of shape "
                f"({self.x.shape[0]},), got {self.y.dtype} of shape {self.y.shape}."
            )

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def n_channels(self) -> int:
        return self.x.shape[1]

    @property
    def length(self) -> int:
        return self.x.shape[2]


# --------------------------------------------------------------------------- .ts files


def read_ts_file(path: str | Path) -> TimeSeriesSource:
    """Read a UCR/UEA ``.ts`` file with this module's own parser (no aeon needed).

    Labels become indices into the ``@classLabel`` list in the order the header declares it, so
    the TRAIN and TEST files of one problem map labels identically. Raises DataError for a
    missing file, a file without ``@data``, timestamped data (``@timeStamps true``), a value
    that is not a number, a label not declared in the header, or a line whose number of
    dimensions (or, for ``@equalLength true``, length) differs from the others; the message
    names the line number.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Time-series file '{path}' does not exist. Check the path and split name.")
    header: dict[str, str] = {}
    class_names: list[str] | None = None
    series: list[list[np.ndarray]] = []
    labels: list[str] = []
    in_data = False
    with path.open("r", encoding="utf-8", errors="replace") as file:
        for line_number, raw in enumerate(file, start=1):
            line = raw.strip()
            if not line or line.startswith(_COMMENT_MARKS):
                continue
            if not in_data:
                key, value = _parse_header_line(line, line_number, path)
                if key == "data":
                    in_data = True
                    class_names = _declared_classes(header, path)
                else:
                    header[key] = value
                continue
            dims, label = _parse_data_line(line, line_number, path, has_label=class_names is not None)
            if series and len(dims) != len(series[0]):
                raise DataError(
                    f"{path}:{line_number}: this series has {len(dims)} dimension(s) but the "
                    f"first one has {len(series[0])}. Every line must have the same number of "
                    f"':'-separated dimensions."
                )
            series.append(dims)
            if label is not None:
                labels.append(label)
    if not in_data:
        raise DataError(f"{path}: no '@data' line found; this is not a .ts file.")
    if not series:
        raise DataError(f"{path}: the '@data' section is empty.")
    _check_header_shape(header, series, path)
    x = _pad_with_nan(series)
    y = None
    if class_names is not None:
        index = {name: k for k, name in enumerate(class_names)}
        y = np.empty(len(labels), dtype=np.int64)
        for i, label in enumerate(labels):
            if label not in index:
                raise DataError(
                    f"{path}: series {i} has label {label!r}, which the @classLabel header "
                    f"does not declare ({' '.join(class_names)})."
                )
            y[i] = index[label]
    return TimeSeriesSource(x=x, y=y, class_names=class_names, name=path.stem)


def read_ts_header(path: str | Path) -> dict[str, str]:
    """The ``@key value`` lines of a ``.ts`` file up to ``@data`` (keys lower-cased)."""
    path = Path(path)
    header: dict[str, str] = {}
    with path.open("r", encoding="utf-8", errors="replace") as file:
        for line_number, raw in enumerate(file, start=1):
            line = raw.strip()
            if not line or line.startswith(_COMMENT_MARKS):
                continue
            key, value = _parse_header_line(line, line_number, path)
            if key == "data":
                return header
            header[key] = value
    raise DataError(f"{path}: no '@data' line found; this is not a .ts file.")


def _parse_header_line(line: str, line_number: int, path: Path) -> tuple[str, str]:
    if not line.startswith("@"):
        raise DataError(
            f"{path}:{line_number}: expected a '@key value' header line or '#' comment before "
            f"'@data', found {line[:40]!r}."
        )
    key, _, value = line[1:].partition(" ")
    return key.lower(), value.strip()


def _declared_classes(header: dict[str, str], path: Path) -> list[str] | None:
    if header.get("timestamps", "false").lower() == "true":
        raise DataError(
            f"{path}: '@timeStamps true' (explicit (time, value) pairs) is not supported; "
            f"resample the series to equal steps and write plain values."
        )
    if header.get("targetlabel", "false").split()[:1] == ["true"]:
        raise DataError(
            f"{path}: '@targetLabel true' marks a regression problem; only classification "
            f"(@classLabel) or unlabeled .ts files are supported."
        )
    words = header.get("classlabel", "false").split()
    if not words or words[0].lower() != "true":
        return None
    if len(words) < 2:
        raise DataError(f"{path}: '@classLabel true' must list the class names after 'true'.")
    return words[1:]


def _parse_data_line(
    line: str, line_number: int, path: Path, has_label: bool
) -> tuple[list[np.ndarray], str | None]:
    fields = line.split(":")
    label = None
    if has_label:
        if len(fields) < 2:
            raise DataError(
                f"{path}:{line_number}: expected 'values:label' (the header says @classLabel "
                f"true) but found no ':' on this line."
            )
        label = fields.pop().strip()
    dims = []
    for dim_index, field in enumerate(fields):
        tokens = field.split(",")
        if tokens and tokens[-1].strip() == "":  # a trailing comma ends some UEA lines
            tokens.pop()
        try:
            values = [math.nan if t.strip() == "?" else float(t) for t in tokens]
        except ValueError as error:
            raise DataError(
                f"{path}:{line_number}: dimension {dim_index} holds a value that is not a number "
                f"({error}). Values are comma-separated numbers, '?' for missing."
            ) from None
        if not values:
            raise DataError(f"{path}:{line_number}: dimension {dim_index} is empty.")
        dims.append(np.asarray(values, dtype=np.float64))
    return dims, label


def _check_header_shape(header: dict[str, str], series: list[list[np.ndarray]], path: Path) -> None:
    n_dims = len(series[0])
    declared_dims = header.get("dimensions")
    if declared_dims is not None and declared_dims.isdigit() and int(declared_dims) != n_dims:
        raise DataError(
            f"{path}: the header declares @dimensions {declared_dims} but the data lines have "
            f"{n_dims} dimension(s)."
        )
    if header.get("equallength", "").lower() == "true":
        expected = header.get("serieslength")
        first = len(series[0][0])
        for i, dims in enumerate(series):
            for d, values in enumerate(dims):
                if len(values) != first or (expected and expected.isdigit() and len(values) != int(expected)):
                    raise DataError(
                        f"{path}: the header says @equalLength true"
                        f"{f' (@seriesLength {expected})' if expected else ''}, but series {i} "
                        f"(data line {i + 1}) dimension {d} has {len(values)} values and the "
                        f"first series has {first}."
                    )


def _pad_with_nan(series: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Stack ragged (N lists of C vectors) into float32 (N, C, T_max), NaN after each end."""
    n, c = len(series), len(series[0])
    t_max = max(len(values) for dims in series for values in dims)
    x = np.full((n, c, t_max), np.nan, dtype=np.float32)
    for i, dims in enumerate(series):
        for d, values in enumerate(dims):
            x[i, d, : len(values)] = values
    return x


# --------------------------------------------------------------------------- arrays


def read_array_file(path: str | Path) -> TimeSeriesSource:
    """Read ``.npy`` (x only) or ``.npz`` (``x``, optional integer ``y``) holding (N, T) or (N, C, T).

    A 2-D array is taken as N univariate series of length T. Raises DataError for a missing
    file, another extension, a missing ``x`` key, or an array of another rank.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Array file '{path}' does not exist.")
    y = None
    if path.suffix == ".npy":
        x = np.load(path, allow_pickle=False)
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive:
                raise DataError(
                    f"{path} has arrays {sorted(archive.files)} but no 'x'. Save the series as "
                    f"np.savez(path, x=series, y=labels)."
                )
            x = archive["x"]
            y = archive["y"] if "y" in archive else None
    else:
        raise DataError(f"{path}: expected a .npy or .npz file, got '{path.suffix}'.")
    return source_from_arrays(x, y, name=path.stem, where=str(path))


def source_from_arrays(
    x: np.ndarray,
    y: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    name: str = "series",
    where: str = "the array",
) -> TimeSeriesSource:
    """A TimeSeriesSource from in-memory arrays; (N, T) is taken as univariate (N, 1, T)."""
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[:, None, :]
    if x.ndim != 3:
        raise DataError(
            f"{where}: time series must have shape (N, T) or (N, C, T), got {x.shape}."
        )
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{where}: time series must be numbers, got dtype {x.dtype}.")
    labels = None
    if y is not None:
        y = np.asarray(y)
        if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
            raise DataError(
                f"{where}: labels must be non-negative integers of shape ({x.shape[0]},), got "
                f"{y.dtype} of shape {y.shape}."
            )
        labels = y.astype(np.int64)
    return TimeSeriesSource(
        x=np.ascontiguousarray(x, dtype=np.float32),
        y=labels,
        class_names=list(class_names) if class_names is not None else None,
        name=name,
    )


# --------------------------------------------------------------------------- aeon's bundled sets


def aeon_data_dir() -> Path:
    """The folder of data sets shipped inside the installed aeon wheel."""
    try:
        import aeon.datasets
    except ImportError:
        raise DataError(
            "Bundled UCR/UEA sets are read from the aeon package, which is not installed. "
            "Install it with `pip install aeon`, or pass a path to a .ts file."
        ) from None
    return Path(aeon.datasets.__file__).parent / "data"


def bundled_dataset_names() -> list[str]:
    """Names of the classification sets aeon ships (NAME/NAME_TRAIN.ts with @classLabel true)."""
    names = []
    for folder in sorted(aeon_data_dir().iterdir()):
        train_file = folder / f"{folder.name}_TRAIN.ts"
        if train_file.is_file() and _is_classification(read_ts_header(train_file)):
            names.append(folder.name)
    return names


def _is_classification(header: dict[str, str]) -> bool:
    return header.get("classlabel", "false").split()[:1] == ["true"]


def load_bundled(name: str, split: str = "train") -> TimeSeriesSource:
    """A UCR/UEA set bundled with aeon, read by aeon's loader from its package folder.

    The name must be one of :func:`bundled_dataset_names`; it is checked before aeon is called
    because aeon downloads unknown names from the internet, which contrastkit never does.
    Labels are indices into the problem's declared class list (the same for both splits).
    """
    split = _check_split(split)
    root = aeon_data_dir()
    names = bundled_dataset_names()
    if name not in names:
        from contrastkit.core.errors import unknown_name_message

        raise DataError(
            unknown_name_message("bundled time-series set", name, names)
            + " Other UCR/UEA sets: download the .ts files and pass their path."
        )
    from aeon.datasets import load_classification

    x, labels = load_classification(name, split=split, extract_path=str(root))
    # aeon lower-cases labels; take the class names as the header spells them, in its order.
    header = read_ts_header(root / name / f"{name}_{split.upper()}.ts")
    class_names = _declared_classes(header, root / name)
    index = {c.lower(): k for k, c in enumerate(class_names)}
    y = np.asarray([index[str(label).lower()] for label in labels], dtype=np.int64)
    if isinstance(x, np.ndarray):
        x = np.ascontiguousarray(x, dtype=np.float32)
    else:  # aeon returns a list of (C, T_i) arrays for unequal-length sets
        x = _pad_with_nan([list(series) for series in x])
    return TimeSeriesSource(x=x, y=y, class_names=class_names, name=f"{name}_{split.upper()}")


def _check_split(split: str) -> str:
    if split.lower() not in SPLITS:
        from contrastkit.core.errors import ConfigError

        raise ConfigError(f"Unknown split '{split}'; use 'train' or 'test'.")
    return split.lower()


# --------------------------------------------------------------------------- one entry point


def open_timeseries_source(spec: str | Path, split: str = "train") -> TimeSeriesSource:
    """Open a time-series set from a spec.

    ``spec`` is a ``.ts``, ``.npy`` or ``.npz`` file; a folder holding ``NAME_TRAIN.ts`` /
    ``NAME_TEST.ts`` (``split`` picks one); or the name of a set bundled with aeon
    (``"GunPoint"``, also spelled ``"aeon:GunPoint"``).
    """
    text = str(spec)
    if text.startswith("aeon:"):
        return load_bundled(text.removeprefix("aeon:"), split)
    path = Path(text).expanduser()
    if path.suffix == ".ts":
        return read_ts_file(path)
    if path.suffix in (".npy", ".npz"):
        return read_array_file(path)
    if path.is_dir():
        return read_ts_file(path / f"{path.name}_{_check_split(split).upper()}.ts")
    if path.exists():
        raise DataError(f"'{path}' is not a .ts, .npy or .npz file nor a UCR/UEA folder.")
    return load_bundled(text, split)


def standardize_with_train_statistics(
    train: np.ndarray, *others: np.ndarray
) -> tuple[np.ndarray, ...]:
    """(x - mean) / std with one mean and std over all finite values of ``train``.

    The official TS2Vec UCR loader does this (not per-series z-normalisation) so the encoder
    still sees amplitude differences between series; the test split reuses the train
    statistics so that nothing about the test set leaks into its scaling.
    """
    mean = float(np.nanmean(train))
    std = float(np.nanstd(train))
    if not np.isfinite(std) or std == 0.0:
        raise DataError(
            f"Cannot standardise: the training series have standard deviation {std} "
            f"(constant or all missing)."
        )
    return tuple(((a - mean) / std).astype(np.float32) for a in (train, *others))
