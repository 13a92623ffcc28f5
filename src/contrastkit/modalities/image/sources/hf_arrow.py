"""Read a Hugging Face ``datasets`` folder written by ``Dataset.save_to_disk``, with pyarrow only
(the ``datasets`` package is not needed).

Such a folder holds::

    data-00000-of-0000K.arrow    the rows, as Arrow IPC *stream* files
    dataset_info.json            "features": the type of each column
    state.json                   "_data_files": the arrow files, in row order

The image column is the first column whose feature is ``{"_type": "Image"}`` (stored as a struct
``{bytes, path}``: the encoded file, or the path of a file when the bytes are null; a relative
path is taken relative to the folder), else the first of the names in
:data:`contrastkit.modalities.image.sources.tables.PATH_COLUMNS` (plus ``img``). The label column
is the first ``ClassLabel`` column (its ``names`` are the class names), else a column named as in
:data:`~contrastkit.modalities.image.sources.tables.LABEL_COLUMNS` (integers or strings, as a
table's). ``ClassLabel`` writes -1 for a missing label: a column of -1 only is an unlabelled set.

A ``DatasetDict`` folder (``dataset_dict.json`` and one folder per split) is refused with the
splits named: pass ``FOLDER/train``.
"""

from __future__ import annotations

import json
from pathlib import Path

from contrastkit.core.errors import DataError
from contrastkit.modalities.image.sources.decoding import EncodedImage, decode_into_source
from contrastkit.modalities.image.sources.image_source import ImageSource
from contrastkit.modalities.image.formats import LABEL_COLUMNS, PATH_COLUMNS
from contrastkit.modalities.image.sources.tables import find_column, labels_and_names

STATE_FILE = "state.json"
INFO_FILE = "dataset_info.json"
DICT_FILE = "dataset_dict.json"
IMAGE_COLUMNS = (*PATH_COLUMNS, "img")


def is_hf_dataset_folder(folder: Path) -> bool:
    """Whether ``folder`` was written by ``save_to_disk`` (a Dataset or a DatasetDict)."""
    return (folder / STATE_FILE).is_file() or (folder / DICT_FILE).is_file()


def read_hf_dataset(
    folder: str | Path,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    num_threads: int | None = None,
    skip_unreadable: bool = False,
) -> ImageSource:
    """The images (and labels) of a ``save_to_disk`` folder; see the module docstring."""
    folder = Path(folder)
    columns, features = read_hf_columns(folder)
    image_column = _image_column(columns, features, folder)
    items = []
    for row, value in enumerate(columns[image_column]):
        items.append(_encoded(value, folder, f"{folder}: row {row} of '{image_column}'"))
    labels, class_names = _labels(columns, features, folder, image_column)
    return decode_into_source(items, labels, class_names, folder.resolve().name, folder, image_size, channels,
                              num_threads, skip_unreadable)


def read_hf_columns(folder: Path) -> tuple[dict[str, list], dict]:
    """(columns as Python lists, the features of dataset_info.json) of a ``save_to_disk`` folder."""
    import pyarrow as pa

    tables = []
    for file in hf_data_files(folder):
        try:
            with pa.memory_map(str(file)) as source:
                tables.append(pa.ipc.open_stream(source).read_all())
        except (pa.ArrowInvalid, OSError) as err:
            raise DataError(f"Cannot read '{file}' as an Arrow stream file ({err}); copy it again.") from err
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    info = _read_json(folder / INFO_FILE) if (folder / INFO_FILE).is_file() else {}
    features = info.get("features") or _schema_features(table.schema)
    return table.to_pydict(), features


def hf_data_files(folder: Path) -> list[Path]:
    """The ``.arrow`` files of a ``save_to_disk`` folder in row order (``state.json``), all present."""
    if (folder / DICT_FILE).is_file() and not (folder / STATE_FILE).is_file():
        splits = json.loads((folder / DICT_FILE).read_text()).get("splits", [])
        raise DataError(f"'{folder}' holds a DatasetDict with splits {', '.join(splits) or '(none)'}; pass the "
                        f"folder of one split, e.g. '{folder / (splits[0] if splits else 'train')}'.")
    state = _read_json(folder / STATE_FILE)
    files = [folder / entry["filename"] for entry in state.get("_data_files", [])]
    if not files:
        raise DataError(f"'{folder / STATE_FILE}' lists no data files ('_data_files'); the folder is incomplete.")
    for file in files:
        if not file.is_file():
            raise DataError(f"'{file}' is listed in {STATE_FILE} but missing; copy the whole folder again.")
    return files


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"'{path}' does not exist: a folder written by save_to_disk has {STATE_FILE} and "
                        f"{INFO_FILE} beside its data-*.arrow files.")
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"'{path}' is not valid JSON ({err}).") from err
    if not isinstance(content, dict):
        raise DataError(f"'{path}' should hold a JSON object.")
    return content


def _schema_features(schema) -> dict:
    """The features that ``datasets`` also keeps in the Arrow schema's metadata (b"huggingface")."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        return {}
    return json.loads(raw).get("info", {}).get("features", {}) or {}


def _feature_type(features: dict, column: str) -> str | None:
    feature = features.get(column)
    return feature.get("_type") if isinstance(feature, dict) else None


def _image_column(columns: dict[str, list], features: dict, folder: Path) -> str:
    typed = [name for name in columns if _feature_type(features, name) == "Image"]
    if typed:
        return typed[0]
    return find_column(columns, IMAGE_COLUMNS, folder, "image (feature Image)")


def _encoded(value, folder: Path, where: str) -> EncodedImage:
    """An Image feature's ``{bytes, path}`` (or a plain path string) as an EncodedImage."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    else:
        data, path = None, value
    if data is not None:
        # The name ends with the stored path when there is one: its suffix tells a TIFF.
        return EncodedImage(f"{where}: {path}" if path else where, bytes(data))
    if not path:
        raise DataError(f"{where}: the image has neither bytes nor a path.")
    file = Path(path)
    file = file if file.is_absolute() else folder / file
    return EncodedImage(str(file), file)


def _labels(columns: dict[str, list], features: dict, folder: Path, image_column: str
            ) -> tuple[list[int] | None, list[str] | None]:
    class_label = [name for name in columns if _feature_type(features, name) == "ClassLabel"]
    if class_label:
        column = class_label[0]
        values = columns[column]
        names = features[column].get("names")
        if all(v == -1 for v in values):
            return None, None
        if any(v is None or v < 0 for v in values):
            raise DataError(f"'{folder}', column '{column}': some rows have no label (-1); keep only labelled "
                            f"rows, or drop the column for an unlabelled set.")
        return list(values), list(names) if names else None
    others = {name: values for name, values in columns.items() if name != image_column}
    column = find_column(others, LABEL_COLUMNS, folder, None)
    if column is None:
        return None, None
    return labels_and_names(columns[column], f"'{folder}', column '{column}'")
