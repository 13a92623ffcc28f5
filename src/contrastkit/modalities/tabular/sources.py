"""Tabular sources: CSV / parquet tables, a train-fitted feature encoder, and the NSL-KDD reader.

A table is held as ``dict[column name, np.ndarray of str]`` (one array per column, raw text), so
that the decision of which columns are categorical and which numeric is made once, by
:class:`TabularEncoder`, and never guessed by the reader::

    table = read_csv_table("flows.csv")
    encoder = TabularEncoder(categorical=["proto"], numeric=["bytes", "duration"]).fit(table_train)
    x_train, x_test = encoder.transform(table_train), encoder.transform(table_test)   # float32

The encoder is fit on training rows only: the one-hot vocabulary and the median / IQR of each
numeric column come from ``fit``'s table and are never updated by ``transform``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contrastkit.core.errors import ConfigError, DataError

Table = dict[str, np.ndarray]
"""Column name -> (N,) array of raw strings, all columns of the same length."""


# ---------------------------------------------------------------------------------- readers


def read_csv_table(
    path: str | Path, column_names: Sequence[str] | None = None, delimiter: str = ","
) -> Table:
    """Read a CSV file into a :data:`Table` of raw strings.

    The first line is the header unless ``column_names`` is given (then the file has no header).
    Blank lines are skipped; a row with a different number of fields than the header raises a
    DataError naming its line number.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file '{path}' does not exist; check the path (or set CONTRASTKIT_DATA).")
    with path.open(newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        rows: list[list[str]] = []
        names = list(column_names) if column_names is not None else None
        for row in reader:
            if not row or all(not field.strip() for field in row):
                continue
            if names is None:
                names = [field.strip() for field in row]
                continue
            if len(row) != len(names):
                raise DataError(
                    f"'{path}' line {reader.line_num}: {len(row)} fields, expected {len(names)} "
                    f"(the number of {'header columns' if column_names is None else 'column names given'}). "
                    "Fix or remove that row; quoted fields may contain the delimiter."
                )
            rows.append(row)
    if names is None or not rows:
        raise DataError(f"CSV file '{path}' has no data rows.")
    if len(set(names)) != len(names):
        raise DataError(f"'{path}': duplicate column names in {names}.")
    columns = np.array(rows, dtype=str).T
    return {name: np.ascontiguousarray(columns[i]) for i, name in enumerate(names)}


def read_parquet_table(path: str | Path) -> Table:
    """Read a parquet file into a :data:`Table` of raw strings (needs pandas with a parquet engine)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"parquet file '{path}' does not exist; check the path.")
    try:
        import pandas as pd
    except ImportError as error:
        raise DataError(
            f"Reading '{path}' needs pandas and pyarrow (pip install pandas pyarrow); or convert the "
            "file to CSV and use read_csv_table."
        ) from error
    try:
        frame = pd.read_parquet(path)
    except ImportError as error:
        raise DataError(f"Reading '{path}' needs a parquet engine: pip install pyarrow.") from error
    return {str(name): frame[name].astype(str).to_numpy() for name in frame.columns}


def read_table(path: str | Path) -> Table:
    """:func:`read_parquet_table` for ``.parquet`` / ``.pq`` files, else :func:`read_csv_table`."""
    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        return read_parquet_table(path)
    return read_csv_table(path)


def table_rows(table: Table, rows: np.ndarray) -> Table:
    """The sub-table of the given row indices (or boolean mask)."""
    return {name: values[rows] for name, values in table.items()}


def table_length(table: Table) -> int:
    lengths = {len(values) for values in table.values()}
    if len(lengths) != 1:
        raise DataError(f"table columns have different lengths {sorted(lengths)}.")
    return lengths.pop()


# ---------------------------------------------------------------------------------- encoder


@dataclass(frozen=True)
class ColumnSlice:
    """Where an input column lands in the encoded matrix: ``x[:, start:stop]``."""

    name: str
    start: int
    stop: int


class TabularEncoder:
    """One-hot categoricals and robust-scaled numerics, fit on training rows only.

    Numeric column ``j`` becomes ``(v - median_j) / IQR_j`` with ``IQR_j = q75_j - q25_j`` of the
    training rows (``IQR_j = 1`` when it is 0, i.e. a column constant on its middle half), then
    optionally clipped to ``[-clip, clip]``. Categorical column ``c`` with training categories
    ``k_1 < ... < k_m`` becomes ``m`` indicator columns; a category unseen at fit time encodes
    to all zeros. Output columns: all numerics in the given order, then each categorical's block
    (see :attr:`column_slices`).

    Args:
        categorical: names of the categorical columns.
        numeric: names of the numeric columns (parsed as float; unparsable text is a DataError).
        clip: optional bound on the scaled numerics (heavy-tailed counts such as byte totals
            otherwise reach 1e6 and dominate an MLP's first layer).
    """

    def __init__(self, categorical: Sequence[str], numeric: Sequence[str], clip: float | None = None):
        overlap = set(categorical) & set(numeric)
        if overlap:
            raise ConfigError(f"TabularEncoder: columns {sorted(overlap)} are both categorical and numeric.")
        if not categorical and not numeric:
            raise ConfigError("TabularEncoder needs at least one categorical or numeric column.")
        if clip is not None and not clip > 0:
            raise ConfigError(f"TabularEncoder: clip must be positive or None, got {clip}.")
        self.categorical = list(categorical)
        self.numeric = list(numeric)
        self.clip = clip
        self.categories: dict[str, np.ndarray] = {}
        self.median: np.ndarray | None = None
        self.iqr: np.ndarray | None = None

    @property
    def is_fitted(self) -> bool:
        return self.median is not None

    def fit(self, table: Table) -> TabularEncoder:
        """Learn the category vocabularies and the numeric median / IQR from ``table``."""
        self._check_columns(table, "fit")
        numbers = self._numbers(table)
        if numbers.shape[0] == 0:
            raise DataError("TabularEncoder.fit got an empty table.")
        q25, median, q75 = np.percentile(numbers, [25, 50, 75], axis=0)
        iqr = q75 - q25
        self.median = median.astype(np.float64)
        self.iqr = np.where(iqr > 0, iqr, 1.0).astype(np.float64)
        self.categories = {name: np.unique(table[name]) for name in self.categorical}
        return self

    def transform(self, table: Table) -> np.ndarray:
        """Encode ``table`` to a float32 matrix (N, :attr:`output_dim`) with the fitted statistics."""
        if not self.is_fitted:
            raise ConfigError("TabularEncoder.transform called before fit; fit it on the training rows first.")
        self._check_columns(table, "transform")
        scaled = (self._numbers(table) - self.median) / self.iqr
        if self.clip is not None:
            scaled = np.clip(scaled, -self.clip, self.clip)
        blocks = [scaled.astype(np.float32)]
        for name in self.categorical:
            vocabulary = self.categories[name]
            values = table[name]
            position = np.searchsorted(vocabulary, values).clip(max=len(vocabulary) - 1)
            known = vocabulary[position] == values
            one_hot = np.zeros((len(values), len(vocabulary)), dtype=np.float32)
            one_hot[np.flatnonzero(known), position[known]] = 1.0
            blocks.append(one_hot)
        return np.concatenate(blocks, axis=1)

    def fit_transform(self, table: Table) -> np.ndarray:
        return self.fit(table).transform(table)

    def state(self) -> dict:
        """What :meth:`fit` learned and the constructor's arguments, as plain JSON values (a run
        folder's ``feature_encoder.json``); :meth:`from_state` rebuilds the same encoder. Floats
        are written in their shortest exact form, so the rebuilt encoder transforms bit for bit alike."""
        if not self.is_fitted:
            raise ConfigError("TabularEncoder.state: fit the encoder first; an unfitted encoder has nothing to save.")
        return {"categorical": self.categorical, "numeric": self.numeric, "clip": self.clip,
                "categories": {name: values.tolist() for name, values in self.categories.items()},
                "median": self.median.tolist(), "iqr": self.iqr.tolist()}

    @classmethod
    def from_state(cls, state: dict) -> TabularEncoder:
        """The fitted encoder whose :meth:`state` is ``state``."""
        try:
            encoder = cls(state["categorical"], state["numeric"], state["clip"])
            encoder.categories = {name: np.asarray(state["categories"][name], dtype=str)
                                  for name in encoder.categorical}
            encoder.median = np.asarray(state["median"], dtype=np.float64)
            encoder.iqr = np.asarray(state["iqr"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"A saved TabularEncoder lacks or garbles '{error}'; it was not written by "
                            f"TabularEncoder.state. Fit the run again, or remove feature_encoder.json to load the run "
                            f"without encode_table.") from None
        if encoder.median.shape != (len(encoder.numeric),) or encoder.iqr.shape != encoder.median.shape:
            raise DataError(f"A saved TabularEncoder has {encoder.median.size} medians and {encoder.iqr.size} IQRs "
                            f"for {len(encoder.numeric)} numeric columns.")
        return encoder

    @property
    def output_dim(self) -> int:
        return self.column_slices[-1].stop

    @property
    def column_slices(self) -> list[ColumnSlice]:
        """One :class:`ColumnSlice` per input column, in output order."""
        if not self.is_fitted:
            raise ConfigError("TabularEncoder: column layout is known only after fit.")
        slices = [ColumnSlice(name, j, j + 1) for j, name in enumerate(self.numeric)]
        start = len(self.numeric)
        for name in self.categorical:
            width = len(self.categories[name])
            slices.append(ColumnSlice(name, start, start + width))
            start += width
        return slices

    def feature_groups(self) -> np.ndarray:
        """(output_dim,) int64: the input column each output feature comes from (for views that
        corrupt or mask whole columns, so a one-hot block is replaced as a unit)."""
        groups = np.empty(self.output_dim, dtype=np.int64)
        for index, piece in enumerate(self.column_slices):
            groups[piece.start : piece.stop] = index
        return groups

    def _numbers(self, table: Table) -> np.ndarray:
        columns = []
        for name in self.numeric:
            try:
                columns.append(table[name].astype(np.float64))
            except ValueError as error:
                raise DataError(
                    f"numeric column '{name}' holds text that is not a number ({error}); declare it "
                    "categorical or clean the file."
                ) from error
        length = table_length(table)
        return np.stack(columns, axis=1) if columns else np.zeros((length, 0))

    def _check_columns(self, table: Table, method: str) -> None:
        missing = [name for name in self.categorical + self.numeric if name not in table]
        if missing:
            raise DataError(
                f"TabularEncoder.{method}: columns {missing} are not in the table (it has "
                f"{sorted(table)[:20]}{' ...' if len(table) > 20 else ''})."
            )


# ---------------------------------------------------------------------------------- NSL-KDD

# Feature names of KDD Cup 1999 / NSL-KDD, in file order (Tavallaee et al. 2009, "A Detailed
# Analysis of the KDD CUP 99 Data Set", IEEE CISDA; the 41 features of the KDD'99 task
# description, kdd.ics.uci.edu/databases/kddcup99/kddcup.names), then the label and the
# NSL-KDD difficulty level (number of the authors' 21 learners that classified the row correctly).
NSL_KDD_FEATURES = (
    "duration", "protocol_type", "service", "flag", "src_bytes", "dst_bytes", "land",
    "wrong_fragment", "urgent", "hot", "num_failed_logins", "logged_in", "num_compromised",
    "root_shell", "su_attempted", "num_root", "num_file_creations", "num_shells",
    "num_access_files", "num_outbound_cmds", "is_host_login", "is_guest_login", "count",
    "srv_count", "serror_rate", "srv_serror_rate", "rerror_rate", "srv_rerror_rate",
    "same_srv_rate", "diff_srv_rate", "srv_diff_host_rate", "dst_host_count",
    "dst_host_srv_count", "dst_host_same_srv_rate", "dst_host_diff_srv_rate",
    "dst_host_same_src_port_rate", "dst_host_srv_diff_host_rate", "dst_host_serror_rate",
    "dst_host_srv_serror_rate", "dst_host_rerror_rate", "dst_host_srv_rerror_rate",
)
NSL_KDD_CATEGORICAL = ("protocol_type", "service", "flag")
NSL_KDD_NUMERIC = tuple(name for name in NSL_KDD_FEATURES if name not in NSL_KDD_CATEGORICAL)
NSL_KDD_COLUMNS = NSL_KDD_FEATURES + ("label", "difficulty")
NSL_KDD_FILES = {"train20": "KDDTrain+_20Percent.txt", "test": "KDDTest+.txt", "test21": "KDDTest-21.txt"}
NORMAL = "normal"

# Attack name -> family. The 22 training attacks follow the KDD Cup 1999 categories (DARPA 1998
# intrusion detection evaluation, Lippmann et al. 2000; kdd.ics.uci.edu/databases/kddcup99/
# training_attack_types); the 17 attacks that occur only in the test set follow the DARPA 1999
# evaluation's taxonomy as tabulated for NSL-KDD by Dhanabal & Shantharajah, "A Study on NSL-KDD
# Dataset for Intrusion Detection System Based on Classification Algorithms", IJARCCE 4(6), 2015
# (Table 2). Some papers put httptunnel under R2L and snmpgetattack under normal-looking R2L;
# we keep the Dhanabal & Shantharajah assignment.
ATTACK_FAMILIES: dict[str, str] = {
    # Denial of service
    **dict.fromkeys(
        ["back", "land", "neptune", "pod", "smurf", "teardrop",
         "apache2", "mailbomb", "processtable", "udpstorm"], "DoS"),
    # Probing / surveillance
    **dict.fromkeys(["ipsweep", "nmap", "portsweep", "satan", "mscan", "saint"], "Probe"),
    # Remote to local
    **dict.fromkeys(
        ["ftp_write", "guess_passwd", "imap", "multihop", "phf", "spy", "warezclient", "warezmaster",
         "named", "sendmail", "snmpgetattack", "snmpguess", "worm", "xlock", "xsnoop"], "R2L"),
    # User to root
    **dict.fromkeys(
        ["buffer_overflow", "loadmodule", "perl", "rootkit", "httptunnel", "ps", "sqlattack", "xterm"], "U2R"),
}
FAMILIES = ("DoS", "Probe", "R2L", "U2R")


@dataclass
class NSLKDD:
    """One NSL-KDD file: the 41 raw feature columns, the attack name, its family, the difficulty."""

    table: Table  # the 41 feature columns, raw strings
    label: np.ndarray  # (N,) 'normal' or an attack name
    family: np.ndarray  # (N,) 'normal', 'DoS', 'Probe', 'R2L' or 'U2R'
    difficulty: np.ndarray  # (N,) int64, 0-21

    @property
    def is_attack(self) -> np.ndarray:
        return self.label != NORMAL

    def __len__(self) -> int:
        return len(self.label)

    def rows(self, rows: np.ndarray) -> NSLKDD:
        return NSLKDD(table_rows(self.table, rows), self.label[rows], self.family[rows], self.difficulty[rows])


def attack_family(label: str) -> str:
    """``'normal'`` or the family of attack ``label``; an unknown name is a DataError."""
    if label == NORMAL:
        return NORMAL
    try:
        return ATTACK_FAMILIES[label]
    except KeyError:
        raise DataError(
            f"NSL-KDD: unknown attack name '{label}'; add it to contrastkit.modalities.tabular.sources.ATTACK_FAMILIES."
        ) from None


def read_nsl_kdd(path: str | Path) -> NSLKDD:
    """Read one NSL-KDD ``.txt`` file (CSV, no header, 43 fields: 41 features, label, difficulty)."""
    table = read_csv_table(path, column_names=NSL_KDD_COLUMNS)
    label = np.char.strip(table.pop("label"))
    try:
        difficulty = table.pop("difficulty").astype(np.int64)
    except ValueError as error:
        raise DataError(f"'{path}': the difficulty column (field 43) is not an integer ({error}).") from error
    family = np.array([attack_family(name) for name in label], dtype=object).astype(str)
    return NSLKDD(table, label, family, difficulty)


def load_nsl_kdd(root: str | Path, split: str) -> NSLKDD:
    """``split`` of the NSL-KDD folder ``root``: ``"train20"``, ``"test"`` (KDDTest+) or ``"test21"``."""
    if split not in NSL_KDD_FILES:
        raise ConfigError(f"Unknown NSL-KDD split '{split}'. Valid splits: {', '.join(NSL_KDD_FILES)}.")
    return read_nsl_kdd(Path(root) / NSL_KDD_FILES[split])


def nsl_kdd_encoder(clip: float | None = None) -> TabularEncoder:
    """A :class:`TabularEncoder` for the NSL-KDD columns (3 categorical, 38 numeric)."""
    return TabularEncoder(categorical=NSL_KDD_CATEGORICAL, numeric=NSL_KDD_NUMERIC, clip=clip)


__all__ = [
    "ATTACK_FAMILIES",
    "FAMILIES",
    "NSLKDD",
    "NSL_KDD_CATEGORICAL",
    "NSL_KDD_FEATURES",
    "NSL_KDD_NUMERIC",
    "ColumnSlice",
    "Table",
    "TabularEncoder",
    "attack_family",
    "load_nsl_kdd",
    "nsl_kdd_encoder",
    "read_csv_table",
    "read_nsl_kdd",
    "read_parquet_table",
    "read_table",
    "table_rows",
]
