"""Tests for the decoded-data cache of mnist_lr.data: served only when provably current."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from mnist_lr import data
from mnist_lr.data import MNIST_FILES, DataError, DecodedCache, load_mnist

TRAIN_IMAGES = MNIST_FILES["train_images"]
TRAIN_LABELS = MNIST_FILES["train_labels"]


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    """The per-user cache folder, moved into the test's own folder."""
    folder = tmp_path / "user-cache"
    monkeypatch.setattr(data.platformdirs, "user_cache_dir", lambda app: str(folder / app))
    return folder


def forbid_decoding(monkeypatch):
    def fail(path):
        raise AssertionError(f"{path} was decoded although the cache holds it")

    monkeypatch.setattr(data, "_read_content", fail)


def assert_same_mnist(loaded, expected):
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(expected, field))
        assert getattr(loaded, field).dtype == getattr(expected, field).dtype
        assert type(getattr(loaded, field)) is np.ndarray
    assert loaded.sha256 == expected.sha256


def test_load_mnist_second_load_comes_from_cache(tmp_path, fake_mnist, monkeypatch):
    folder = fake_mnist.write(tmp_path / "mnist")
    first = load_mnist(folder, download=False, checksums=fake_mnist.checksums)
    forbid_decoding(monkeypatch)

    second = load_mnist(folder, download=False, checksums=fake_mnist.checksums)

    assert_same_mnist(second, first)
    entries = sorted(path.name for path in (folder / ".decoded").iterdir())
    assert f"{TRAIN_IMAGES}.{fake_mnist.checksums[TRAIN_IMAGES]}.npy" in entries
    assert not [name for name in entries if name.endswith(".tmp")]


def test_load_mnist_without_cache_writes_nothing(tmp_path, fake_mnist):
    folder = fake_mnist.write(tmp_path / "mnist")

    load_mnist(folder, download=False, checksums=fake_mnist.checksums, cache=False)

    assert not (folder / ".decoded").exists()


def test_load_mnist_damaged_cache_entry_is_decoded_again(tmp_path, fake_mnist, caplog):
    folder = fake_mnist.write(tmp_path / "mnist")
    first = load_mnist(folder, download=False, checksums=fake_mnist.checksums)
    entry = folder / ".decoded" / f"{TRAIN_IMAGES}.{fake_mnist.checksums[TRAIN_IMAGES]}.npy"
    damaged = bytearray(entry.read_bytes())
    damaged[-1] ^= 0xFF
    entry.write_bytes(bytes(damaged))

    second = load_mnist(folder, download=False, checksums=fake_mnist.checksums)

    assert_same_mnist(second, first)
    assert "damaged" in caplog.text
    repaired = DecodedCache(folder / ".decoded").get(
        TRAIN_IMAGES, folder / f"{TRAIN_IMAGES}.gz", fake_mnist.checksums[TRAIN_IMAGES]
    )
    np.testing.assert_array_equal(repaired, fake_mnist.arrays["train_images"])


def test_load_mnist_changed_source_file_is_verified_again(tmp_path, fake_mnist):
    folder = fake_mnist.write(tmp_path / "mnist")
    load_mnist(folder, download=False, checksums=fake_mnist.checksums)
    labels = fake_mnist.arrays["train_labels"].copy()
    labels[0] = (labels[0] + 1) % 10
    other = type(fake_mnist).from_arrays(dict(fake_mnist.arrays, train_labels=labels))
    (folder / f"{TRAIN_LABELS}.gz").write_bytes(other.gz(TRAIN_LABELS))
    os.utime(folder / f"{TRAIN_LABELS}.gz", ns=(1, 1))  # a different time, whatever the clock

    with pytest.raises(DataError, match="wrong SHA-256"):
        load_mnist(folder, download=False, checksums=fake_mnist.checksums)

    reloaded = load_mnist(folder, download=False, checksums=other.checksums)
    np.testing.assert_array_equal(reloaded.train_labels, labels)


def test_load_mnist_read_only_folder_caches_in_user_cache(tmp_path, fake_mnist, user_cache):
    folder = fake_mnist.write(tmp_path / "mnist")
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        load_mnist(folder, download=False, checksums=fake_mnist.checksums)
    finally:
        folder.chmod(stat.S_IRWXU)

    assert not (folder / ".decoded").exists()
    cached = list((user_cache / "mnist-lr" / "decoded").glob("*/*.npy"))
    assert len(cached) == len(MNIST_FILES)


def test_decoded_cache_rejects_entry_for_another_checksum(tmp_path, fake_mnist):
    folder = fake_mnist.write(tmp_path / "mnist")
    cache = DecodedCache(tmp_path / "cache")
    source = folder / f"{TRAIN_LABELS}.gz"
    checksum = fake_mnist.checksums[TRAIN_LABELS]
    cache.put(TRAIN_LABELS, source, checksum, fake_mnist.arrays["train_labels"])
    # An entry renamed to another checksum must not pass for that content.
    wrong = "f" * 64
    for suffix in (".npy", ".json"):
        (cache.folder / f"{TRAIN_LABELS}.{checksum}{suffix}").rename(
            cache.folder / f"{TRAIN_LABELS}.{wrong}{suffix}"
        )

    assert cache.get(TRAIN_LABELS, source, wrong) is None


def test_decoded_cache_unwritable_folder_only_warns(tmp_path, fake_mnist, caplog):
    source = fake_mnist.write(tmp_path / "mnist") / f"{TRAIN_LABELS}.gz"
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    cache = DecodedCache(blocker / "cache")

    cache.put(TRAIN_LABELS, source, fake_mnist.checksums[TRAIN_LABELS], np.zeros(3, np.uint8))

    assert "cannot write the decoded-data cache" in caplog.text


@pytest.mark.mnist
def test_load_mnist_real_mnist_from_cache_equals_decoded(mnist_dir, monkeypatch):
    decoded = load_mnist(mnist_dir, download=False, cache=False)
    load_mnist(mnist_dir, download=False)  # fills the cache
    forbid_decoding(monkeypatch)

    cached = load_mnist(mnist_dir, download=False)

    assert_same_mnist(cached, decoded)
