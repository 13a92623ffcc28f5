"""Read IDX files (the format of MNIST, Fashion-MNIST, EMNIST, KMNIST), gzip-compressed or not.

Format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a header of
    2 zero bytes, 1 byte dtype code, 1 byte ndim, then ndim dimensions as big-endian uint32,
followed by prod(dims) values of the dtype, big-endian, C order. Compression is recognised
by the gzip magic bytes (1f 8b), not by the file name.
"""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path

import numpy as np
import torch

from contrastkit.core.errors import DataError
from contrastkit.modalities.image.sources.image_source import ImageSource
from contrastkit.modalities.image.sources.pixels import to_uint8

GZIP_MAGIC = b"\x1f\x8b"
# IDX dtype code -> numpy dtype (big-endian where it matters).
IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# MNIST-style names: "<prefix>-images-idx3-ubyte[.gz]" with "<prefix>-labels-idx1-ubyte[.gz]"
# (Kaggle copies use a dot: "t10k-images.idx3-ubyte").
IMAGES_NAME = re.compile(r"^(?P<prefix>.+)-images[.-]idx3-ubyte(?:\.gz)?$")
LABELS_NAME = "{prefix}-labels{sep}idx1-ubyte"


def read_idx(images_path: str | Path, labels_path: str | Path | None = None) -> ImageSource:
    """An IDX image file (N, H, W) -> ImageSource (N, 1, H, W), with labels from an IDX label
    file (N,) if given.

    Non-uint8 images are converted as ``pixels.to_uint8`` describes; labels may have any IDX
    dtype holding whole numbers >= 0.
    """
    images_path = Path(images_path)
    images = read_idx_array(images_path)
    if images.ndim != 3:
        raise DataError(
            f"IDX image file '{images_path}' holds an array of shape {images.shape}; "
            f"expected (N, height, width). Is it a label file?"
        )
    pixels = torch.from_numpy(to_uint8(images, f"IDX file '{images_path}'").copy())[:, None]
    labels = None
    if labels_path is not None:
        labels_path = Path(labels_path)
        raw = read_idx_array(labels_path)
        if raw.ndim != 1:
            raise DataError(
                f"IDX label file '{labels_path}' holds an array of shape {raw.shape}; "
                f"expected (N,)."
            )
        if len(raw) != len(images):
            raise DataError(
                f"IDX label file '{labels_path}' has {len(raw)} labels but image file "
                f"'{images_path}' has {len(images)} images; the two files must come from the "
                f"same split."
            )
        if np.issubdtype(raw.dtype, np.floating) and not np.array_equal(raw, np.round(raw)):
            raise DataError(f"IDX label file '{labels_path}' holds non-integer labels.")
        labels = torch.from_numpy(raw.astype(np.int64))
    name = IMAGES_NAME.sub(r"\g<prefix>", images_path.name)
    return ImageSource(pixels, labels, None, name=name, root=images_path)


def read_idx_array(path: Path) -> np.ndarray:
    """The array stored in one IDX file (native byte order)."""
    if not path.is_file():
        raise DataError(f"IDX file '{path}' does not exist. Check the path.")
    data = path.read_bytes()
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as err:
            raise DataError(
                f"IDX file '{path}' is a damaged gzip file ({err}); download it again."
            ) from err
    dtype, dims, offset = parse_idx_header(data, path)
    expected = offset + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        problem = "is truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(
            f"IDX file '{path}' {problem}: its header declares shape {tuple(dims)} of "
            f"{dtype.name} ({expected} bytes with the header) but it holds {len(data)} bytes "
            f"(after decompression). Download it again."
        )
    array = np.frombuffer(data, dtype=dtype, offset=offset).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=False)


def parse_idx_header(data: bytes, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, dims, offset of the first value) from the bytes of an IDX file."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise DataError(
            f"'{path}' is not an IDX file: it starts with bytes {data[:4].hex(' ')}, but IDX "
            f"files start with 00 00, a dtype code ({', '.join(f'{c:02x}' for c in IDX_DTYPES)}) "
            f"and the number of dimensions."
        )
    ndim = data[3]
    offset = 4 + 4 * ndim
    if ndim == 0 or len(data) < offset:
        raise DataError(f"IDX file '{path}' is truncated inside its header (ndim={ndim}).")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    return IDX_DTYPES[data[2]], dims, offset


def is_idx_file(path: Path) -> bool:
    """Whether ``path`` starts like an IDX file (after gunzip if gzip-compressed)."""
    try:
        with path.open("rb") as f:
            head = f.read(2)
        if head == GZIP_MAGIC:
            with gzip.open(path, "rb") as f:
                head = f.read(4)
        else:
            with path.open("rb") as f:
                head = f.read(4)
    except (OSError, EOFError, zlib.error):
        return False
    return len(head) == 4 and head[:2] == b"\0\0" and head[2] in IDX_DTYPES and head[3] > 0


def labels_beside(images_path: Path) -> Path | None:
    """The MNIST-style label file next to an image file, if present:
    ``t10k-images-idx3-ubyte.gz`` -> ``t10k-labels-idx1-ubyte[.gz]``."""
    match = IMAGES_NAME.match(images_path.name)
    if match is None:
        return None
    sep = images_path.name[len(match["prefix"]) + len("-images")]
    stem = LABELS_NAME.format(prefix=match["prefix"], sep=sep)
    for candidate in (stem, stem + ".gz"):
        if (images_path.parent / candidate).is_file():
            return images_path.parent / candidate
    return None


def idx_images_in(folder: Path) -> list[Path]:
    """MNIST-style IDX image files directly in ``folder``, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and IMAGES_NAME.match(p.name))
