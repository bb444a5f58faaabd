"""Tests for mnist_lr.download against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import logging
import os

import pytest

from mnist_lr.data import MNIST_FILES
from mnist_lr.download import DEFAULT_MIRRORS, DownloadError, download_file

NAME = MNIST_FILES["train_labels"]
GZ_NAME = f"{NAME}.gz"


def test_default_mirrors_are_https():
    assert len(DEFAULT_MIRRORS) >= 2
    assert all(mirror.startswith("https://") for mirror in DEFAULT_MIRRORS)


def test_download_file_saves_verified_file(tmp_path, fake_mnist, mirror_server):
    mirror_server.serve("a", GZ_NAME, fake_mnist.gz(NAME))

    path = download_file(NAME, tmp_path, [mirror_server.base_url("a")], fake_mnist.checksums[NAME])

    assert path == tmp_path / GZ_NAME
    assert path.read_bytes() == fake_mnist.gz(NAME)
    assert os.listdir(tmp_path) == [GZ_NAME]


def test_download_file_creates_missing_folder(tmp_path, fake_mnist, mirror_server):
    mirror_server.serve("a", GZ_NAME, fake_mnist.gz(NAME))
    folder = tmp_path / "cache" / "mnist"

    path = download_file(NAME, folder, [mirror_server.base_url("a")], fake_mnist.checksums[NAME])

    assert path == folder / GZ_NAME


def test_download_file_saves_raw_payload_under_raw_name(tmp_path, fake_mnist, mirror_server):
    mirror_server.serve("a", GZ_NAME, fake_mnist.contents[NAME])

    path = download_file(NAME, tmp_path, [mirror_server.base_url("a")], fake_mnist.checksums[NAME])

    assert path == tmp_path / NAME


def test_download_file_logs_the_mirror(tmp_path, fake_mnist, mirror_server, caplog):
    mirror_server.serve("a", GZ_NAME, fake_mnist.gz(NAME))
    mirror = mirror_server.base_url("a")

    with caplog.at_level(logging.INFO, logger="mnist_lr.download"):
        download_file(NAME, tmp_path, [mirror], fake_mnist.checksums[NAME])

    assert f"downloading {NAME} from {mirror}{GZ_NAME}" in caplog.messages


def test_download_file_falls_back_after_404(tmp_path, fake_mnist, mirror_server):
    mirror_server.serve("b", GZ_NAME, fake_mnist.gz(NAME))
    mirrors = [mirror_server.base_url("a"), mirror_server.base_url("b")]

    path = download_file(NAME, tmp_path, mirrors, fake_mnist.checksums[NAME])

    assert mirror_server.requests == [f"/a/{GZ_NAME}", f"/b/{GZ_NAME}"]
    assert path.read_bytes() == fake_mnist.gz(NAME)


def test_download_file_falls_back_after_connection_refused(
    tmp_path, fake_mnist, mirror_server, refused_url
):
    mirror_server.serve("b", GZ_NAME, fake_mnist.gz(NAME))
    mirrors = [refused_url, mirror_server.base_url("b")]

    path = download_file(NAME, tmp_path, mirrors, fake_mnist.checksums[NAME])

    assert path.read_bytes() == fake_mnist.gz(NAME)


def test_download_file_falls_back_after_corrupt_payload(tmp_path, fake_mnist, mirror_server):
    mirror_server.serve("a", GZ_NAME, fake_mnist.gz(NAME)[:-10])
    mirror_server.serve("b", GZ_NAME, fake_mnist.gz(NAME))
    mirrors = [mirror_server.base_url("a"), mirror_server.base_url("b")]

    path = download_file(NAME, tmp_path, mirrors, fake_mnist.checksums[NAME])

    assert path.read_bytes() == fake_mnist.gz(NAME)
    assert os.listdir(tmp_path) == [GZ_NAME]


@pytest.mark.parametrize(
    ("payload_kind", "reason"),
    [
        ("other_file", "corrupt payload: SHA-256 of its content is"),
        ("truncated_gzip", "corrupt gzip payload"),
        ("html_page", "corrupt payload: SHA-256 of its content is"),
    ],
)
def test_download_file_rejects_corrupt_payload_and_leaves_no_file(
    tmp_path, fake_mnist, mirror_server, payload_kind, reason
):
    payloads = {
        "other_file": fake_mnist.gz(MNIST_FILES["test_labels"]),
        "truncated_gzip": fake_mnist.gz(NAME)[:-10],
        "html_page": b"<html><body>Access denied</body></html>",
    }
    mirror_server.serve("a", GZ_NAME, payloads[payload_kind])
    mirror = mirror_server.base_url("a")

    with pytest.raises(DownloadError, match=reason):
        download_file(NAME, tmp_path, [mirror], fake_mnist.checksums[NAME])

    assert os.listdir(tmp_path) == []


def test_download_file_all_mirrors_down_lists_each(
    tmp_path, fake_mnist, mirror_server, refused_url
):
    mirrors = [mirror_server.base_url("a"), refused_url]

    with pytest.raises(DownloadError) as raised:
        download_file(NAME, tmp_path, mirrors, fake_mnist.checksums[NAME])

    lines = str(raised.value).splitlines()
    assert lines[0] == f"could not download {NAME} from any mirror:"
    assert lines[1] == f"  {mirrors[0]}{GZ_NAME}: HTTP 404 Not Found"
    assert lines[2].startswith(f"  {refused_url}{GZ_NAME}: cannot connect (")
    assert "refused" in lines[2].lower()
    assert os.listdir(tmp_path) == []


def test_download_file_works_after_mirror_is_fixed(tmp_path, fake_mnist, mirror_server):
    mirror = mirror_server.base_url("a")
    mirror_server.serve("a", GZ_NAME, b"<html>502 Bad Gateway</html>")
    with pytest.raises(DownloadError):
        download_file(NAME, tmp_path, [mirror], fake_mnist.checksums[NAME])

    mirror_server.serve("a", GZ_NAME, fake_mnist.gz(NAME))
    path = download_file(NAME, tmp_path, [mirror], fake_mnist.checksums[NAME])

    assert path.read_bytes() == fake_mnist.gz(NAME)
    assert os.listdir(tmp_path) == [GZ_NAME]


def test_download_file_removes_temp_file_on_keyboard_interrupt(
    tmp_path, fake_mnist, mirror_server, monkeypatch
):
    mirror_server.serve("a", GZ_NAME, fake_mnist.gz(NAME))
    written = []

    def interrupted_fsync(fd):
        written.extend(os.listdir(tmp_path))
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted_fsync)

    with pytest.raises(KeyboardInterrupt):
        download_file(NAME, tmp_path, [mirror_server.base_url("a")], fake_mnist.checksums[NAME])

    assert len(written) == 1 and written[0].endswith(".part")  # the temporary file existed
    assert os.listdir(tmp_path) == []


def test_download_file_write_failure_is_download_error(tmp_path, fake_mnist, mirror_server):
    mirror_server.serve("a", GZ_NAME, fake_mnist.gz(NAME))
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")

    with pytest.raises(DownloadError, match=r"cannot create folder"):
        download_file(
            NAME, not_a_folder, [mirror_server.base_url("a")], fake_mnist.checksums[NAME]
        )


@pytest.mark.parametrize(
    "mirror", ["http://example.com/mnist/", "ftp://127.0.0.1/mnist/", "file:///tmp/"]
)
def test_download_file_rejects_mirror_without_https(tmp_path, mirror):
    with pytest.raises(ValueError, match=r"must be an https:// URL"):
        download_file(NAME, tmp_path, [mirror], "0" * 64)


def test_download_file_rejects_empty_mirror_list(tmp_path):
    with pytest.raises(DownloadError, match=r"no mirrors given"):
        download_file(NAME, tmp_path, [], "0" * 64)
