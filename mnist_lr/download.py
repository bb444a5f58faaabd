"""Fetch the MNIST IDX files from public mirrors, verify them, and save them atomically.

Standard library only, so that it can be tested against a local HTTP server without the rest
of the project. `mnist_lr.data.load_mnist` calls `download_file` for each missing file and
turns a `DownloadError` into a `DataError` that says how to fix it.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import ipaddress
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

# The largest MNIST file is under 10 MiB compressed; anything far bigger is not MNIST.
MAX_PAYLOAD_BYTES = 64 * 2**20

_GZIP_MAGIC = b"\x1f\x8b"


class DownloadError(Exception):
    """No mirror delivered a verified file, or the file could not be saved."""


def download_file(
    name: str,
    dest_dir: str | os.PathLike[str],
    mirrors: Sequence[str],
    expected_sha256: str,
    timeout: float = 30,
) -> Path:
    """Download `NAME.gz` from the first mirror that serves a verified copy; return its path.

    Mirrors are base URLs tried in order; a mirror fails over to the next on an HTTP error,
    a network error, or a payload whose decompressed SHA-256 is not `expected_sha256`. The
    file is written to a temporary file in `dest_dir`, fsynced and renamed, so the final name
    never holds a partial file. Raises `DownloadError` listing every mirror and why it failed.
    """
    urls = [_file_url(base, name) for base in mirrors]
    if not urls:
        raise DownloadError(f"cannot download {name}: no mirrors given")
    dest_dir = Path(dest_dir)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"cannot create folder {dest_dir} for {name}: {err}") from err

    failures = []
    for url in urls:
        logger.info("downloading %s from %s", name, url)
        try:
            payload = _fetch(url, timeout)
            _verify(payload, expected_sha256)
        except DownloadError as err:
            logger.warning("mirror failed for %s: %s: %s", name, url, err)
            failures.append(f"  {url}: {err}")
            continue
        dest = dest_dir / (f"{name}.gz" if payload.startswith(_GZIP_MAGIC) else name)
        _write_atomically(dest, payload)
        logger.info("saved %s (%d bytes, SHA-256 verified)", dest, len(payload))
        return dest

    raise DownloadError(f"could not download {name} from any mirror:\n" + "\n".join(failures))


def _file_url(base: str, name: str) -> str:
    """URL of `NAME.gz` under a mirror's base URL; plain HTTP is allowed for loopback only."""
    parts = urllib.parse.urlsplit(base)
    if parts.scheme != "https" and not (parts.scheme == "http" and _is_loopback(parts.hostname)):
        raise ValueError(
            f"mirror {base!r} must be an https:// URL (plain http:// is accepted only for "
            "localhost, for tests)"
        )
    return base.rstrip("/") + f"/{name}.gz"


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _fetch(url: str, timeout: float) -> bytes:
    """Body of `url`, or `DownloadError` with a one-line reason."""
    # A fresh opener reads the proxy settings from the environment at each call.
    opener = urllib.request.build_opener()
    try:
        with opener.open(url, timeout=timeout) as response:
            payload = response.read(MAX_PAYLOAD_BYTES + 1)
    except urllib.error.HTTPError as err:
        raise DownloadError(f"HTTP {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        raise DownloadError(f"cannot connect ({err.reason})") from err
    except (OSError, http.client.HTTPException) as err:
        raise DownloadError(f"transfer failed ({type(err).__name__}: {err})") from err
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise DownloadError(f"payload larger than {MAX_PAYLOAD_BYTES} bytes, not an MNIST file")
    return payload


def _verify(payload: bytes, expected_sha256: str) -> None:
    """Check the SHA-256 of the decompressed payload (gzip told apart by its magic bytes)."""
    content = payload
    if payload.startswith(_GZIP_MAGIC):
        try:
            content = gzip.decompress(payload)
        except (OSError, EOFError, zlib.error) as err:
            raise DownloadError(f"corrupt gzip payload ({err})") from err
    digest = hashlib.sha256(content).hexdigest()
    if digest != expected_sha256:
        raise DownloadError(
            f"corrupt payload: SHA-256 of its content is {digest}, expected {expected_sha256}"
        )


def _write_atomically(dest: Path, payload: bytes) -> None:
    """Write via a temporary file in the same folder, fsync, then rename over `dest`."""
    try:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as err:
        raise DownloadError(f"cannot write to folder {dest.parent}: {err}") from err
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(payload)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, dest)
    except BaseException as err:
        # Also on KeyboardInterrupt: never leave a temporary file behind.
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise DownloadError(f"cannot save {dest}: {err}") from err
        raise
    _fsync_folder(dest.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable; not every platform can open a folder, so this is best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
