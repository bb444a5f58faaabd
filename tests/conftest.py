"""Shared fixtures: small generated MNIST-like IDX files, a local mirror, the real MNIST folder."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from mnist_lr.data import MNIST_FILES

_IDX_MAGIC_BY_NDIM = {1: 2049, 3: 2051}
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def _encode_idx(array: np.ndarray) -> bytes:
    """IDX bytes of a uint8 array of labels `(n,)` or images `(n, rows, cols)`."""
    header = _IDX_MAGIC_BY_NDIM[array.ndim].to_bytes(4, "big")
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


@pytest.fixture
def encode_idx() -> Callable[[np.ndarray], bytes]:
    """Function turning a uint8 array into the bytes of an IDX file."""
    return _encode_idx


@dataclass(frozen=True)
class FakeMnist:
    """A tiny MNIST look-alike: the same four files, random pixels and labels."""

    arrays: dict[str, np.ndarray]  # MNIST_FILES key -> uint8 array as stored in the file
    contents: dict[str, bytes] = field(default_factory=dict)  # file name -> raw IDX bytes
    checksums: dict[str, str] = field(default_factory=dict)  # file name -> SHA-256 of contents

    @classmethod
    def generate(cls, n_train: int = 50, n_test: int = 20, seed: int = 0) -> FakeMnist:
        rng = np.random.default_rng(seed)
        arrays = {
            "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
            "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
        }
        # Both ends of the pixel range must map to exactly 0.0 and 1.0.
        arrays["train_images"][0, 0, :2] = (0, 255)
        return cls.from_arrays(arrays)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> FakeMnist:
        contents = {MNIST_FILES[key]: _encode_idx(array) for key, array in arrays.items()}
        checksums = {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()}
        return cls(arrays, contents, checksums)

    def gz(self, name: str) -> bytes:
        return gzip.compress(self.contents[name], mtime=0)

    def write(self, folder: Path, *, compress: bool = True, skip: tuple[str, ...] = ()) -> Path:
        """Write the files (as `NAME.gz` or `NAME`) into `folder`, leaving out `skip`."""
        folder.mkdir(parents=True, exist_ok=True)
        for name in self.contents:
            if name in skip:
                continue
            if compress:
                (folder / f"{name}.gz").write_bytes(self.gz(name))
            else:
                (folder / name).write_bytes(self.contents[name])
        return folder


@pytest.fixture
def fake_mnist() -> FakeMnist:
    """50 training and 20 test images of random pixels, with their own checksums."""
    return FakeMnist.generate()


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST folder from env MNIST_LR_DATA_DIR; skips without it (fails when CI=true)."""
    folder = os.environ.get("MNIST_LR_DATA_DIR")
    if not folder:
        problem = "env MNIST_LR_DATA_DIR is not set"
    else:
        absent = [
            name
            for name in MNIST_FILES.values()
            if not (Path(folder, f"{name}.gz").exists() or Path(folder, name).exists())
        ]
        problem = f"{folder} lacks {', '.join(absent)}" if absent else ""
    if problem:
        message = f"real MNIST not available: {problem}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return Path(folder)


class MirrorServer:
    """An HTTP server on 127.0.0.1 serving `files` (URL path -> body); other paths give 404."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        handler = self._make_handler()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def base_url(self, mirror: str) -> str:
        """Base URL of one mirror on this server, e.g. `http://127.0.0.1:PORT/a/`."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/{mirror}/"

    def serve(self, mirror: str, file_name: str, body: bytes) -> None:
        self.files[f"/{mirror}/{file_name}"] = body

    def _make_handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass  # keep test output quiet

        return Handler

    def __enter__(self) -> MirrorServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


@pytest.fixture
def mirror_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[MirrorServer]:
    """A local mirror; proxy settings are cleared so requests stay on 127.0.0.1."""
    for variable in _PROXY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
        monkeypatch.delenv(variable.upper(), raising=False)
    with MirrorServer() as server:
        yield server


@pytest.fixture
def refused_url() -> str:
    """Base URL of a loopback port where nothing listens: connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"
