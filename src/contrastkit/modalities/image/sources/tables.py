"""Read the images listed in a CSV or Parquet file (``--data images.csv``).

One row per image. The columns are found by name (case-insensitive, the first of each list that
the file has):

    image path   path, image, file, filename, filepath, image_path
    label        label, class, labels, target, category      (optional: without it, unlabelled)

A path is relative to the folder of the table, or absolute. Labels are integers (class ids >= 0,
used as they are) or strings (class names; class k is the k-th name in sorted order). Every row
needs a label when the column is there. CSV files are read with the standard library (a header
row, comma-separated; ``.tsv`` tab-separated); Parquet files need ``pyarrow``.

Decoding is :mod:`contrastkit.modalities.image.sources.decoding`'s (8-bit formats and TIFF,
``skip_unreadable``), as for an image folder: the images may have any size when ``image_size``
is given.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from contrastkit.core.errors import DataError
from contrastkit.modalities.image.formats import LABEL_COLUMNS, PATH_COLUMNS, TABLE_EXTENSIONS
from contrastkit.modalities.image.sources.decoding import EncodedImage, decode_into_source
from contrastkit.modalities.image.sources.image_source import ImageSource



def read_image_table(
    path: str | Path,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    num_threads: int | None = None,
    skip_unreadable: bool = False,
) -> ImageSource:
    """The images (and labels) that the table ``path`` lists; see the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"'{path}' does not exist. Check the path.")
    columns = _read_columns(path)
    path_column = find_column(columns, PATH_COLUMNS, path, "image path")
    label_column = find_column(columns, LABEL_COLUMNS, path, None)
    cells = columns[path_column]
    if not cells:
        raise DataError(f"'{path}' lists no images (it has a header but no rows).")
    items = []
    for row, cell in enumerate(cells):
        if cell is None or str(cell).strip() == "":
            raise DataError(f"'{path}', row {row + 1}: the '{path_column}' cell is empty; every row names an image.")
        file = Path(str(cell).strip()).expanduser()
        file = file if file.is_absolute() else path.parent / file
        items.append(EncodedImage(str(file), file))
    labels, class_names = (None, None) if label_column is None else \
        labels_and_names(columns[label_column], f"'{path}', column '{label_column}'")
    return decode_into_source(items, labels, class_names, path.stem, path, image_size, channels, num_threads,
                              skip_unreadable)


def find_column(columns: dict[str, list], candidates: Sequence[str], path: Path | str,
                required: str | None) -> str | None:
    """The first of ``candidates`` among the table's column names (ignoring case), or None; when
    ``required`` names what the column holds, its absence is a DataError listing the columns."""
    by_lower = {name.lower(): name for name in columns}
    for candidate in candidates:
        if candidate in by_lower:
            return by_lower[candidate]
    if required is None:
        return None
    raise DataError(
        f"'{path}' has no {required} column: its columns are {', '.join(repr(c) for c in columns) or 'none'}. "
        f"Name the column one of: {', '.join(candidates)}."
    )


def labels_and_names(values: Sequence, what: str) -> tuple[list[int], list[str] | None]:
    """Class ids of a label column, and the class names when the labels are strings.

    Integers (or strings that all spell integers, as a CSV gives them) are class ids and must be
    >= 0; other strings are class names, numbered in sorted order. A missing label is an error."""
    for row, value in enumerate(values):
        if value is None or (isinstance(value, str) and value.strip() == ""):
            raise DataError(f"{what}: row {row + 1} has no label. Give every row a label, or drop the column "
                            f"for an unlabelled set.")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        ids = list(values)
    elif all(isinstance(v, str) for v in values) and all(_spells_integer(v) for v in values):
        ids = [int(v) for v in values]
    elif all(isinstance(v, str) for v in values):
        names = sorted({v.strip() for v in values})
        number = {name: k for k, name in enumerate(names)}
        return [number[v.strip()] for v in values], names
    else:
        kinds = sorted({type(v).__name__ for v in values})
        raise DataError(f"{what}: labels must be integers or strings (class names), found {', '.join(kinds)}.")
    if min(ids) < 0:
        raise DataError(f"{what}: integer labels are class ids >= 0, found {min(ids)}.")
    return ids, None


def _spells_integer(text: str) -> bool:
    text = text.strip()
    return text.lstrip("-").isdigit()


def _read_columns(path: Path) -> dict[str, list]:
    """The table's columns by name, as Python values (strings for CSV)."""
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as err:
            raise DataError(f"Reading '{path}' needs pyarrow: pip install pyarrow (or contrastkit[tabular]).") from err
        try:
            return pq.read_table(path).to_pydict()
        except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ... on a bad file
            raise DataError(f"Cannot read '{path}' as a Parquet file ({err}).") from err
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte-order mark
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise DataError(f"'{path}' is empty: it needs a header row naming its columns (e.g. path,label).")
            header = [name.strip() for name in header]
            rows = [row for row in reader if any(cell.strip() for cell in row)]
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"Cannot read '{path}' as a CSV file ({err}).") from err
    for number, row in enumerate(rows):
        if len(row) != len(header):
            raise DataError(f"'{path}', row {number + 1}: {len(row)} cells for {len(header)} columns "
                            f"({', '.join(header)}).")
    return {name: [row[i] for row in rows] for i, name in enumerate(header)}
