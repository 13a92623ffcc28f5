"""Read webdataset-style tar shards with the standard library's ``tarfile``.

``--data`` names the shards as one ``.tar`` file, a folder of ``.tar`` files (sorted by name), a
glob (``shards/*.tar``, sorted) or a brace list (``shards/train-{000..009}.tar``,
``shards/{a,b}.tar``, in the order written).

Inside a shard, the members of one sample share a *key*: the member's path up to the first dot
of its file name, the rest being its extension (``n01/img_7.jpg`` and ``n01/img_7.cls`` are the
``jpg`` and ``cls`` of sample ``n01/img_7``). A sample has one image (``jpg``, ``jpeg``, ``png``,
``bmp``, ``webp``, ``tif`` or ``tiff``; the first of these when it has several) and optionally a
label: ``cls`` holds the class as text (an integer id, or a class name), ``json`` an object whose
``label`` or ``class`` entry is one. Samples without an image (metadata only) are not images and
are left out; every sample with an image must have a label when any has one. Class names (labels
that are not integers) are numbered in sorted order.

Decoding is :mod:`contrastkit.modalities.image.sources.decoding`'s, as for an image folder
(``skip_unreadable`` leaves out images that cannot be decoded); a shard that is not a readable tar
stops the reading.
"""

from __future__ import annotations

import glob
import itertools
import json
import re
import tarfile
from pathlib import Path

from contrastkit.core.errors import DataError
from contrastkit.modalities.image.formats import TAR_SUFFIXES
from contrastkit.modalities.image.sources.decoding import EncodedImage, decode_into_source
from contrastkit.modalities.image.sources.image_source import ImageSource
from contrastkit.modalities.image.sources.tables import labels_and_names

IMAGE_KEYS = ("jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff")
LABEL_KEYS = ("cls", "json")
JSON_LABEL_ENTRIES = ("label", "class")
BRACE = re.compile(r"\{([^{}]*)\}")
RANGE = re.compile(r"^(\d+)\.\.(\d+)$")


def is_tar_spec(text: str) -> bool:
    """Whether ``--data`` names tar shards by file, glob or brace list (a folder is checked apart)."""
    return text.lower().endswith(TAR_SUFFIXES)


def tar_files_in(folder: Path) -> list[Path]:
    """The tar shards directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(TAR_SUFFIXES))


def expand_shard_spec(spec: str) -> list[Path]:
    """The shard files of a file name, glob or brace list (see the module docstring)."""
    names = expand_braces(spec)
    files: list[Path] = []
    for name in names:
        if any(c in name for c in "*?["):
            matched = sorted(glob.glob(str(Path(name).expanduser())))
            if not matched:
                raise DataError(f"No tar shard matches '{name}'. Check the pattern.")
            files.extend(Path(m) for m in matched)
        else:
            files.append(Path(name).expanduser())
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        shown = ", ".join(f"'{m}'" for m in missing[:3])
        raise DataError(f"Tar shard(s) {shown}{' and more' if len(missing) > 3 else ''} of '{spec}' do not exist.")
    return files


def expand_braces(text: str) -> list[str]:
    """``a{0..2}b`` -> ``a0b a1b a2b`` (zero padding kept: ``{08..10}`` -> 08 09 10); ``{x,y}`` ->
    both; several groups multiply, left to right."""
    parts = BRACE.split(text)  # literal, group, literal, group, ..., literal
    choices = []
    for position, part in enumerate(parts):
        if position % 2 == 0:
            choices.append([part])
            continue
        numeric = RANGE.match(part)
        if numeric:
            first, last = numeric.groups()
            width = len(first) if first.startswith("0") else 0
            choices.append([str(k).zfill(width) for k in range(int(first), int(last) + 1)])
        else:
            choices.append(part.split(","))
    return ["".join(combination) for combination in itertools.product(*choices)]


def split_key(member_name: str) -> tuple[str, str]:
    """(key, extension): the path up to the first dot of the file name, and the rest, lower-cased."""
    folder, _, file = member_name.rpartition("/")
    stem, dot, extension = file.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def read_tar_samples(files: list[Path]) -> tuple[list[EncodedImage], list[object] | None]:
    """The samples of the shards, in shard and member order: their images (bytes) and their raw
    labels (the ``cls`` text or the ``json`` entry; None when no sample has a label)."""
    images: list[EncodedImage] = []
    raw_labels: list[object] = []
    labelled = 0
    for file in files:
        samples: dict[str, dict[str, bytes]] = {}
        try:
            with tarfile.open(file, "r:*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, extension = split_key(member.name)
                    if extension in IMAGE_KEYS + LABEL_KEYS:
                        samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as err:
            raise DataError(f"Cannot read tar shard '{file}' ({err}); it is damaged or not a tar file.") from err
        for key, members in samples.items():
            image_key = next((k for k in IMAGE_KEYS if k in members), None)
            if image_key is None:
                continue
            images.append(EncodedImage(f"{file}:{key}.{image_key}", members[image_key]))
            label = _raw_label(members, f"{file}:{key}")
            labelled += label is not None
            raw_labels.append(label)
    if labelled and labelled != len(images):
        missing = next(image.name for image, label in zip(images, raw_labels) if label is None)
        raise DataError(f"{len(images) - labelled} of the {len(images)} samples have no label (.cls or .json), "
                        f"e.g. '{missing}'. Label every sample, or none for an unlabelled set.")
    return images, (raw_labels if labelled else None)


def _raw_label(members: dict[str, bytes], where: str) -> object:
    if "cls" in members:
        return members["cls"].decode("utf-8").strip()
    if "json" in members:
        try:
            meta = json.loads(members["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"'{where}.json' is not valid JSON ({err}).") from err
        if isinstance(meta, dict):
            for entry in JSON_LABEL_ENTRIES:
                if entry in meta:
                    return meta[entry]
    return None


def read_tar_shards(
    files: list[Path],
    name: str,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    num_threads: int | None = None,
    skip_unreadable: bool = False,
) -> ImageSource:
    """The images (and labels) of webdataset-style tar shards; see the module docstring."""
    if not files:
        raise DataError(f"'{name}' names no tar shards.")
    images, raw_labels = read_tar_samples(files)
    if not images:
        raise DataError(f"The tar shards of '{name}' hold no images ({', '.join(IMAGE_KEYS)} members).")
    labels, class_names = (None, None) if raw_labels is None else labels_and_names(
        [str(v) for v in raw_labels], f"labels of the tar shards '{name}'")
    root = files[0] if len(files) == 1 else files[0].parent
    return decode_into_source(images, labels, class_names, name, root, image_size, channels, num_threads,
                              skip_unreadable)
