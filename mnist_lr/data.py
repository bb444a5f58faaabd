"""MNIST from the four standard IDX files: find, download, verify, read, split.

Each file sits in the data folder as `NAME.gz` or `NAME`; gzip is recognised by its content
(magic bytes 1f 8b), so a raw file named `.gz` loads as well. Every file is checked against the
SHA-256 of its decompressed content before it is used.

Decoding the gzip files takes about half a second, paid by every run of a sweep, so the decoded
pixels and labels are cached as `.npy` files named by that SHA-256 (see `DecodedCache`). The
cache is checked against the same SHA-256 each time it is read, so it cannot serve other data.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import stat
import tempfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs

from mnist_lr.download import DEFAULT_MIRRORS, DownloadError, download_file

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "MNIST_LR_DATA_DIR"

MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

IMAGE_SIDE = 28
N_CLASSES = 10

# IDX magic numbers of unsigned-byte files, with the number of dimensions they encode.
_IDX_LABELS_MAGIC = 2049
_IDX_IMAGES_MAGIC = 2051
_IDX_NDIM = {_IDX_LABELS_MAGIC: 1, _IDX_IMAGES_MAGIC: 3}
_GZIP_MAGIC = b"\x1f\x8b"


class DataError(ValueError):
    """An MNIST file is missing, unreadable, truncated or corrupt; the message gives the fix."""


@dataclass(frozen=True, eq=False)
class Mnist:
    """The MNIST train and test sets, as loaded by `load_mnist`."""

    train_images: np.ndarray  # (n_train, 784) float32 in [0, 1]
    train_labels: np.ndarray  # (n_train,) int64 in 0..9
    test_images: np.ndarray  # (n_test, 784) float32 in [0, 1]
    test_labels: np.ndarray  # (n_test,) int64 in 0..9
    sha256: dict[str, str]  # file name -> verified SHA-256 of its decompressed content


@dataclass(frozen=True, eq=False)
class Split:
    """Training images and a held-out validation set (both None when `val_size` is 0)."""

    train_images: np.ndarray  # (n_train - val_size, 784)
    train_labels: np.ndarray  # (n_train - val_size,)
    val_images: np.ndarray | None  # (val_size, 784)
    val_labels: np.ndarray | None  # (val_size,)


def default_data_dir() -> Path:
    """Env `MNIST_LR_DATA_DIR` when set, else the per-user cache folder `.../mnist-lr/mnist`."""
    from_env = os.environ.get(DATA_DIR_ENV)
    if from_env:
        return Path(from_env).expanduser()
    return cache_data_dir()


def cache_data_dir() -> Path:
    """The per-user cache folder that missing files are downloaded into by default."""
    return Path(platformdirs.user_cache_dir("mnist-lr")) / "mnist"


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzip or raw) into a read-only uint8 array.

    The shape comes from the header: `(n,)` for labels (magic 2049) and `(n, rows, cols)`
    for images (magic 2051). Raises `DataError` naming the file and what is wrong with it.
    """
    path = Path(path).expanduser().absolute()
    return _parse_idx(_read_content(path), path)


def load_mnist(
    data_dir: str | os.PathLike[str] | None,
    *,
    download: bool = True,
    mirrors: Sequence[str] | None = None,
    checksums: Mapping[str, str] = MNIST_SHA256,
    cache: bool = True,
) -> Mnist:
    """Load and verify MNIST from `data_dir` (None: `default_data_dir()`).

    Missing files are downloaded from `mirrors` (default `DEFAULT_MIRRORS`) unless `download`
    is false. `checksums` maps each file name to the SHA-256 of its decompressed content.
    With `cache`, files decoded before are read from the `DecodedCache` of `data_dir`.
    Raises `DataError` with one message naming the file, the problem and the fix.
    """
    data_dir = (default_data_dir() if data_dir is None else Path(data_dir)).expanduser()
    data_dir = data_dir.absolute()  # error messages name full paths
    mirrors = DEFAULT_MIRRORS if mirrors is None else tuple(mirrors)
    missing = [name for name in MNIST_FILES.values() if name not in checksums]
    if missing:
        raise ValueError(f"checksums has no SHA-256 for {', '.join(missing)}")

    decoded_cache = DecodedCache.for_data_dir(data_dir) if cache else None
    arrays = {}
    verified = {}
    for key, name in MNIST_FILES.items():
        path = _find_or_download(data_dir, name, download, mirrors, checksums[name])
        cached = decoded_cache.get(name, path, checksums[name]) if decoded_cache else None
        if cached is not None:
            arrays[key], verified[name] = cached, checksums[name]
            continue
        try:
            # Parse before hashing: "truncated" or "an HTML page" says more than a bad hash.
            content = _read_content(path)
            arrays[key] = _parse_idx(content, path)
            _check_role(arrays[key], path, images=key.endswith("_images"))
            verified[name] = _check_sha256(content, path, checksums[name])
        except DataError as err:
            raise DataError(f"{err}\n{_fix_for_bad_file(path, download, mirrors)}") from None
        if decoded_cache:
            decoded_cache.put(name, path, verified[name], arrays[key])
    _check_counts(arrays, data_dir, download, mirrors)

    logger.info(
        "loaded MNIST from %s: %d train and %d test images",
        data_dir,
        len(arrays["train_labels"]),
        len(arrays["test_labels"]),
    )
    return Mnist(
        train_images=_images_to_float(arrays["train_images"]),
        train_labels=arrays["train_labels"].astype(np.int64),
        test_images=_images_to_float(arrays["test_images"]),
        test_labels=arrays["test_labels"].astype(np.int64),
        sha256=verified,
    )


def split_validation(images: np.ndarray, labels: np.ndarray, val_size: int, seed: int) -> Split:
    """Hold out `val_size` random samples for validation, chosen by `seed`.

    Both parts keep the original order of the samples. `val_size` 0 means no validation set.
    """
    n_samples = len(images)
    if len(labels) != n_samples:
        raise ValueError(f"{n_samples} images but {len(labels)} labels; they must match")
    if val_size < 0:
        raise ValueError(f"data.val_size must be >= 0, got {val_size}; use 0 for no validation")
    if val_size >= n_samples:
        raise ValueError(
            f"data.val_size must be smaller than the number of training images "
            f"({n_samples}), got {val_size}; lower data.val_size (0 turns validation off)"
        )
    if val_size == 0:
        return Split(images, labels, None, None)

    order = np.random.default_rng(seed).permutation(n_samples)
    val_index = np.sort(order[:val_size])
    train_index = np.sort(order[val_size:])
    return Split(images[train_index], labels[train_index], images[val_index], labels[val_index])


class DecodedCache:
    """Decoded IDX arrays (uint8, as in the files) kept as `.npy` files in `folder`.

    An entry is `NAME.SHA256.npy` plus `NAME.SHA256.json`, the size and modification time of
    the source file it was decoded from. `get` serves an entry only when the source file
    still has that size and time (else the file changed: it is decoded and checked again)
    and when the array, behind its IDX header, still hashes to the SHA-256 in its name: a
    damaged or tampered entry is decoded anew, never served. Entries are written to a
    temporary file and renamed into place, so a crash or a concurrent writer leaves
    either a whole entry or none.
    """

    def __init__(self, folder: Path):
        self.folder = folder

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> DecodedCache:
        """`data_dir/.decoded` when `data_dir` is writable, else a folder for it under the
        per-user cache folder. A folder whose mode denies writing counts as read-only even
        to root, who could write there anyway."""
        if _is_writable_dir(data_dir):
            return cls(data_dir / ".decoded")
        key = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
        return cls(Path(platformdirs.user_cache_dir("mnist-lr")) / "decoded" / key)

    def get(self, name: str, source: Path, sha256: str) -> np.ndarray | None:
        """The verified array decoded from `source`, or None when there is no valid entry."""
        array_path, stamp_path = self._paths(name, sha256)
        try:
            stamp = json.loads(stamp_path.read_text())
            if stamp != _stamp(source):
                return None
            array = np.load(array_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return None
        if array.dtype != np.uint8 or array.ndim not in (1, 3) or not _hashes_to(array, sha256):
            logger.warning("decoded-data cache entry %s is damaged; decoding again", array_path)
            return None
        return np.asarray(array)  # a plain array over the mapped file, not a np.memmap

    def put(self, name: str, source: Path, sha256: str, array: np.ndarray) -> None:
        """Store `array`, verified to hash to `sha256`; a failure to write is only logged."""
        array_path, stamp_path = self._paths(name, sha256)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            _write_atomically(array_path, lambda handle: np.save(handle, array))
            stamp = json.dumps(_stamp(source)).encode()
            _write_atomically(stamp_path, lambda handle: handle.write(stamp))
        except OSError as err:
            logger.warning("cannot write the decoded-data cache in %s: %s", self.folder, err)

    def _paths(self, name: str, sha256: str) -> tuple[Path, Path]:
        return self.folder / f"{name}.{sha256}.npy", self.folder / f"{name}.{sha256}.json"


def _is_writable_dir(folder: Path) -> bool:
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return bool(mode & stat.S_IWUSR) and os.access(folder, os.W_OK)


def _stamp(source: Path) -> dict[str, object]:
    status = source.stat()
    return {"source": str(source), "size": status.st_size, "mtime_ns": status.st_mtime_ns}


def _hashes_to(array: np.ndarray, sha256: str) -> bool:
    """Whether the IDX file holding `array` (header + bytes) has SHA-256 `sha256`."""
    magic = _IDX_IMAGES_MAGIC if array.ndim == 3 else _IDX_LABELS_MAGIC
    digest = hashlib.sha256(magic.to_bytes(4, "big"))
    digest.update(np.asarray(array.shape, dtype=">u4").tobytes())
    digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return digest.hexdigest() == sha256


def _write_atomically(path: Path, write) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o644)  # readable by all, like the data files (mkstemp makes 0600)
        with os.fdopen(handle, "wb") as file:
            write(file)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _find_or_download(
    data_dir: Path, name: str, download: bool, mirrors: Sequence[str], sha256: str
) -> Path:
    """Path of `NAME.gz` or `NAME` in `data_dir`, downloading it when allowed."""
    candidates = [data_dir / f"{name}.gz", data_dir / name]
    for path in candidates:
        if path.exists():
            return path

    looked_in = " or ".join(str(path) for path in candidates)
    if not download:
        raise DataError(
            f"MNIST file {name} not found: looked for {looked_in}.\n"
            f"To fix: set env {DATA_DIR_ENV} (or config key data.dir) to a folder holding it, "
            f"or set data.download=true to download it from {_list(mirrors)}."
        )
    try:
        return download_file(name, data_dir, mirrors, sha256)
    except DownloadError as err:
        raise DataError(
            f"MNIST file {name} not found (looked for {looked_in}) and the download failed: "
            f"{err}\nTo fix: check the network and retry, or put the file there yourself, or "
            f"set env {DATA_DIR_ENV} (or config key data.dir) to a folder that holds it."
        ) from None


def _fix_for_bad_file(what: str | Path, download: bool, mirrors: Sequence[str]) -> str:
    redownload = "" if download else " and set data.download=true"
    return (
        f"To fix: delete {what}{redownload}; missing files are downloaded again from "
        f"{_list(mirrors)}. Or set env {DATA_DIR_ENV} (or config key data.dir) to a folder "
        "holding good copies of the MNIST files."
    )


def _list(mirrors: Sequence[str]) -> str:
    return ", ".join(mirrors) if mirrors else "(no mirrors configured)"


def _read_content(path: Path) -> bytes:
    """The file's bytes, decompressed when they start with the gzip magic bytes."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read MNIST file {path}: {err}") from err
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError as err:
        raise DataError(f"MNIST file {path} is a truncated gzip file ({err})") from err
    except (OSError, zlib.error) as err:
        raise DataError(f"MNIST file {path} is a corrupt gzip file ({err})") from err


def _check_sha256(content: bytes, path: Path, expected: str) -> str:
    digest = hashlib.sha256(content).hexdigest()
    if digest != expected:
        raise DataError(
            f"MNIST file {path} has the wrong SHA-256: its (decompressed) content hashes to "
            f"{digest}, expected {expected}; the file is corrupt or not the standard one"
        )
    return digest


def _parse_idx(content: bytes, path: Path) -> np.ndarray:
    """Decode an unsigned-byte IDX buffer; checks magic number and exact length."""
    magic = int.from_bytes(content[:4], "big")
    if len(content) < 4 or magic not in _IDX_NDIM:
        raise DataError(
            f"MNIST file {path} is not an IDX file: it starts with bytes "
            f"{content[:4].hex(' ') or '(none, the file is empty)'} where the magic number "
            f"{_IDX_LABELS_MAGIC} (labels) or {_IDX_IMAGES_MAGIC} (images) should be"
            + _looks_like_text(content)
        )

    header_size = 4 + 4 * _IDX_NDIM[magic]
    if len(content) < header_size:
        raise DataError(
            f"MNIST file {path} is truncated: {len(content)} bytes, shorter than its "
            f"{header_size}-byte IDX header"
        )
    shape = tuple(int(size) for size in np.frombuffer(content, ">u4", _IDX_NDIM[magic], 4))
    expected_size = header_size + int(np.prod(shape, dtype=np.int64))
    if len(content) != expected_size:
        problem = "truncated" if len(content) < expected_size else "followed by trailing bytes"
        raise DataError(
            f"MNIST file {path} is {problem}: {len(content)} bytes, expected exactly "
            f"{expected_size} for its header's shape {shape}"
        )
    return np.frombuffer(content, np.uint8, offset=header_size).reshape(shape)


def _looks_like_text(content: bytes) -> str:
    if content.lstrip()[:1] == b"<":
        return "; it looks like an HTML page, probably an error page saved by a failed download"
    return ""


def _check_role(array: np.ndarray, path: Path, images: bool) -> None:
    """An images file must hold 28x28 images, a labels file digits 0..9."""
    if images and array.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(
            f"MNIST file {path} should hold images of {IMAGE_SIDE}x{IMAGE_SIDE} pixels, "
            f"but its header gives shape {array.shape}"
        )
    if not images and array.ndim != 1:
        raise DataError(f"MNIST file {path} should hold labels, but it holds images")
    if not images and array.size and array.max() >= N_CLASSES:
        raise DataError(f"MNIST file {path} has label {array.max()}, expected digits 0..9")


def _check_counts(
    arrays: dict[str, np.ndarray], data_dir: Path, download: bool, mirrors: Sequence[str]
) -> None:
    for split in ("train", "test"):
        n_images = len(arrays[f"{split}_images"])
        n_labels = len(arrays[f"{split}_labels"])
        if n_images != n_labels:
            images_name = MNIST_FILES[f"{split}_images"]
            labels_name = MNIST_FILES[f"{split}_labels"]
            raise DataError(
                f"MNIST {split} files in {data_dir} do not match: {n_images} images in "
                f"{images_name} but {n_labels} labels in {labels_name}.\n"
                + _fix_for_bad_file("both files", download, mirrors)
            )


def _images_to_float(images: np.ndarray) -> np.ndarray:
    """(n, 28, 28) uint8 -> (n, 784) float32 in [0, 1], C-contiguous."""
    pixels = images.reshape(len(images), -1).astype(np.float32)
    pixels /= 255.0
    return pixels
