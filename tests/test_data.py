"""Tests for mnist_lr.data: IDX reading, verification, loading and the validation split."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import platformdirs
import pytest

from mnist_lr.data import (
    MNIST_FILES,
    MNIST_SHA256,
    DataError,
    Mnist,
    default_data_dir,
    load_mnist,
    read_idx,
    split_validation,
)

TRAIN_IMAGES = MNIST_FILES["train_images"]
TRAIN_LABELS = MNIST_FILES["train_labels"]


# read_idx


def test_read_idx_reads_gzip_file(tmp_path, fake_mnist):
    path = tmp_path / f"{TRAIN_IMAGES}.gz"
    path.write_bytes(fake_mnist.gz(TRAIN_IMAGES))

    images = read_idx(path)

    assert images.dtype == np.uint8
    assert images.shape == (50, 28, 28)
    np.testing.assert_array_equal(images, fake_mnist.arrays["train_images"])


def test_read_idx_reads_raw_labels_file(tmp_path, fake_mnist):
    path = tmp_path / TRAIN_LABELS
    path.write_bytes(fake_mnist.contents[TRAIN_LABELS])

    labels = read_idx(str(path))

    assert labels.shape == (50,)
    np.testing.assert_array_equal(labels, fake_mnist.arrays["train_labels"])


def test_read_idx_reads_raw_file_named_gz(tmp_path, fake_mnist):
    # Gzip is told apart by content, so a raw file with a .gz name loads as it is.
    path = tmp_path / f"{TRAIN_IMAGES}.gz"
    path.write_bytes(fake_mnist.contents[TRAIN_IMAGES])

    np.testing.assert_array_equal(read_idx(path), fake_mnist.arrays["train_images"])


def test_read_idx_rejects_bad_magic(tmp_path, fake_mnist):
    content = bytearray(fake_mnist.contents[TRAIN_IMAGES])
    content[3] = 0x09  # 2057 instead of 2051
    path = tmp_path / TRAIN_IMAGES
    path.write_bytes(bytes(content))

    with pytest.raises(DataError, match=r"not an IDX file.*00 00 08 09.*2049.*2051"):
        read_idx(path)


@pytest.mark.parametrize("keep_bytes", [0, 3, 10, 16 + 28 * 28 * 50 - 1])
def test_read_idx_rejects_truncated_file(tmp_path, fake_mnist, keep_bytes):
    path = tmp_path / TRAIN_IMAGES
    path.write_bytes(fake_mnist.contents[TRAIN_IMAGES][:keep_bytes])

    with pytest.raises(DataError, match=re.escape(str(path))):
        read_idx(path)


def test_read_idx_truncated_data_reports_expected_size(tmp_path, fake_mnist):
    path = tmp_path / TRAIN_LABELS
    path.write_bytes(fake_mnist.contents[TRAIN_LABELS][:-5])

    with pytest.raises(DataError, match=r"is truncated: 53 bytes, expected exactly 58"):
        read_idx(path)


def test_read_idx_rejects_truncated_gzip_stream(tmp_path, fake_mnist):
    path = tmp_path / f"{TRAIN_IMAGES}.gz"
    path.write_bytes(fake_mnist.gz(TRAIN_IMAGES)[:-100])

    with pytest.raises(DataError, match=r"truncated gzip file"):
        read_idx(path)


def test_read_idx_rejects_corrupt_gzip_stream(tmp_path, fake_mnist):
    compressed = bytearray(fake_mnist.gz(TRAIN_LABELS))
    compressed[-8] ^= 0xFF  # break the CRC-32 in the gzip trailer
    path = tmp_path / f"{TRAIN_LABELS}.gz"
    path.write_bytes(bytes(compressed))

    with pytest.raises(DataError, match=r"corrupt gzip file"):
        read_idx(path)


def test_read_idx_rejects_trailing_bytes(tmp_path, fake_mnist):
    path = tmp_path / f"{TRAIN_LABELS}.gz"
    path.write_bytes(gzip.compress(fake_mnist.contents[TRAIN_LABELS] + b"\x00\x00"))

    with pytest.raises(DataError, match=r"followed by trailing bytes: 60 bytes, expected"):
        read_idx(path)


def test_read_idx_rejects_html_page_saved_as_gz(tmp_path):
    path = tmp_path / f"{TRAIN_IMAGES}.gz"
    path.write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>\n")

    with pytest.raises(DataError, match=r"looks like an HTML page") as raised:
        read_idx(path)
    assert str(path) in str(raised.value)


def test_read_idx_rejects_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"cannot read MNIST file"):
        read_idx(tmp_path / TRAIN_IMAGES)


# load_mnist on generated data


def test_load_mnist_loads_generated_gzip_files(tmp_path, fake_mnist):
    fake_mnist.write(tmp_path)

    mnist = load_mnist(tmp_path, download=False, checksums=fake_mnist.checksums)

    assert isinstance(mnist, Mnist)
    assert mnist.train_images.shape == (50, 784)
    assert mnist.test_images.shape == (20, 784)
    for images in (mnist.train_images, mnist.test_images):
        assert images.dtype == np.float32
        assert images.flags.c_contiguous
    assert mnist.train_images.min() == 0.0
    assert mnist.train_images.max() == 1.0
    expected = fake_mnist.arrays["train_images"].reshape(50, 784) / np.float32(255)
    np.testing.assert_allclose(mnist.train_images, expected, rtol=1e-6)
    assert mnist.train_labels.dtype == np.int64
    np.testing.assert_array_equal(mnist.test_labels, fake_mnist.arrays["test_labels"])
    assert mnist.sha256 == fake_mnist.checksums


def test_load_mnist_loads_raw_files(tmp_path, fake_mnist):
    fake_mnist.write(tmp_path, compress=False)

    mnist = load_mnist(str(tmp_path), download=False, checksums=fake_mnist.checksums)

    np.testing.assert_array_equal(mnist.train_labels, fake_mnist.arrays["train_labels"])


def test_load_mnist_none_uses_data_dir_from_env(tmp_path, fake_mnist, monkeypatch):
    monkeypatch.setenv("MNIST_LR_DATA_DIR", str(fake_mnist.write(tmp_path)))

    mnist = load_mnist(None, download=False, checksums=fake_mnist.checksums)

    assert mnist.test_labels.shape == (20,)


def test_load_mnist_checksum_mismatch_names_file(tmp_path, fake_mnist):
    fake_mnist.write(tmp_path)
    checksums = dict(fake_mnist.checksums, **{TRAIN_LABELS: "0" * 64})

    with pytest.raises(DataError) as raised:
        load_mnist(tmp_path, download=False, checksums=checksums)

    message = str(raised.value)
    assert f"{tmp_path / TRAIN_LABELS}.gz has the wrong SHA-256" in message
    assert fake_mnist.checksums[TRAIN_LABELS] in message
    assert "0" * 64 in message


def test_load_mnist_checksum_mismatch_says_how_to_fix(tmp_path, fake_mnist):
    fake_mnist.write(tmp_path)
    mirrors = ["https://mirror-a.example/mnist/", "https://mirror-b.example/mnist/"]

    # Generated files against the real MNIST checksums: every file is "corrupt".
    with pytest.raises(DataError) as raised:
        load_mnist(tmp_path, download=False, mirrors=mirrors, checksums=MNIST_SHA256)

    message = str(raised.value)
    assert f"delete {tmp_path / TRAIN_IMAGES}.gz and set data.download=true" in message
    assert "https://mirror-a.example/mnist/, https://mirror-b.example/mnist/" in message
    assert "MNIST_LR_DATA_DIR" in message
    assert "data.dir" in message


def test_load_mnist_missing_file_without_download_says_how_to_fix(tmp_path, fake_mnist):
    fake_mnist.write(tmp_path, skip=(TRAIN_LABELS,))

    with pytest.raises(DataError) as raised:
        load_mnist(tmp_path, download=False, checksums=fake_mnist.checksums)

    message = str(raised.value)
    assert f"{tmp_path / TRAIN_LABELS}.gz or {tmp_path / TRAIN_LABELS}" in message
    assert "MNIST_LR_DATA_DIR" in message
    assert "data.dir" in message
    assert "data.download=true" in message
    assert not (tmp_path / f"{TRAIN_LABELS}.gz").exists()


def test_load_mnist_rejects_wrong_image_size(tmp_path, fake_mnist):
    arrays = dict(fake_mnist.arrays, train_images=np.zeros((50, 28, 27), dtype=np.uint8))
    wrong = type(fake_mnist).from_arrays(arrays)
    wrong.write(tmp_path)

    with pytest.raises(DataError, match=r"images of 28x28 pixels.*\(50, 28, 27\)"):
        load_mnist(tmp_path, download=False, checksums=wrong.checksums)


def test_load_mnist_rejects_labels_file_in_images_place(tmp_path, fake_mnist):
    fake_mnist.write(tmp_path)
    images_path = tmp_path / f"{TRAIN_IMAGES}.gz"
    images_path.write_bytes(fake_mnist.gz(TRAIN_LABELS))
    checksums = dict(fake_mnist.checksums, **{TRAIN_IMAGES: fake_mnist.checksums[TRAIN_LABELS]})

    with pytest.raises(DataError, match=re.escape(f"{images_path} should hold images")):
        load_mnist(tmp_path, download=False, checksums=checksums)


def test_load_mnist_rejects_image_label_count_mismatch(tmp_path, fake_mnist):
    arrays = dict(fake_mnist.arrays, test_labels=fake_mnist.arrays["test_labels"][:19])
    mismatched = type(fake_mnist).from_arrays(arrays)
    mismatched.write(tmp_path)

    with pytest.raises(DataError, match=r"test files in .* 20 images in .* but 19 labels"):
        load_mnist(tmp_path, download=False, checksums=mismatched.checksums)


def test_load_mnist_rejects_label_out_of_range(tmp_path, fake_mnist):
    labels = fake_mnist.arrays["train_labels"].copy()
    labels[7] = 10
    bad = type(fake_mnist).from_arrays(dict(fake_mnist.arrays, train_labels=labels))
    bad.write(tmp_path)

    with pytest.raises(DataError, match=r"has label 10, expected digits 0\.\.9"):
        load_mnist(tmp_path, download=False, checksums=bad.checksums)


def test_load_mnist_requires_a_checksum_per_file(tmp_path, fake_mnist):
    fake_mnist.write(tmp_path)
    checksums = {TRAIN_IMAGES: fake_mnist.checksums[TRAIN_IMAGES]}

    with pytest.raises(ValueError, match=r"no SHA-256 for train-labels-idx1-ubyte"):
        load_mnist(tmp_path, download=False, checksums=checksums)


# load_mnist with a local mirror


def test_load_mnist_downloads_missing_files(tmp_path, fake_mnist, mirror_server):
    fake_mnist.write(tmp_path, skip=(TRAIN_IMAGES,))
    mirror_server.serve("a", f"{TRAIN_IMAGES}.gz", fake_mnist.gz(TRAIN_IMAGES))

    mnist = load_mnist(
        tmp_path, mirrors=[mirror_server.base_url("a")], checksums=fake_mnist.checksums
    )

    assert mirror_server.requests == [f"/a/{TRAIN_IMAGES}.gz"]
    assert (tmp_path / f"{TRAIN_IMAGES}.gz").read_bytes() == fake_mnist.gz(TRAIN_IMAGES)
    assert mnist.train_images.shape == (50, 784)


def test_load_mnist_does_not_download_present_files(tmp_path, fake_mnist, mirror_server):
    fake_mnist.write(tmp_path)

    load_mnist(tmp_path, mirrors=[mirror_server.base_url("a")], checksums=fake_mnist.checksums)

    assert mirror_server.requests == []


def test_load_mnist_failed_download_says_how_to_fix(tmp_path, fake_mnist, mirror_server):
    fake_mnist.write(tmp_path, skip=(TRAIN_LABELS,))
    mirror = mirror_server.base_url("a")

    with pytest.raises(DataError) as raised:
        load_mnist(tmp_path, mirrors=[mirror], checksums=fake_mnist.checksums)

    message = str(raised.value)
    assert f"{mirror}{TRAIN_LABELS}.gz: HTTP 404" in message
    assert "MNIST_LR_DATA_DIR" in message
    assert "data.dir" in message


# default_data_dir


def test_default_data_dir_uses_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MNIST_LR_DATA_DIR", str(tmp_path))

    assert default_data_dir() == tmp_path


def test_default_data_dir_falls_back_to_user_cache(monkeypatch):
    monkeypatch.delenv("MNIST_LR_DATA_DIR", raising=False)

    expected = Path(platformdirs.user_cache_dir("mnist-lr")) / "mnist"
    assert default_data_dir() == expected


# split_validation


def _numbered_samples(n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose first pixel is their index, so samples can be traced after the split."""
    images = np.zeros((n_samples, 784), dtype=np.float32)
    images[:, 0] = np.arange(n_samples)
    return images, np.arange(n_samples) % 10


def test_split_validation_is_deterministic_for_a_seed():
    images, labels = _numbered_samples(100)

    first = split_validation(images, labels, val_size=20, seed=7)
    second = split_validation(images, labels, val_size=20, seed=7)
    other_seed = split_validation(images, labels, val_size=20, seed=8)

    np.testing.assert_array_equal(first.val_images, second.val_images)
    np.testing.assert_array_equal(first.train_labels, second.train_labels)
    assert not np.array_equal(first.val_images[:, 0], other_seed.val_images[:, 0])


def test_split_validation_parts_are_disjoint_and_complete():
    images, labels = _numbered_samples(100)

    split = split_validation(images, labels, val_size=30, seed=0)

    train_ids = split.train_images[:, 0].astype(int)
    val_ids = split.val_images[:, 0].astype(int)
    assert len(train_ids) == 70 and len(val_ids) == 30
    assert set(train_ids).isdisjoint(val_ids)
    assert sorted([*train_ids, *val_ids]) == list(range(100))
    np.testing.assert_array_equal(split.train_labels, train_ids % 10)
    np.testing.assert_array_equal(split.val_labels, val_ids % 10)


def test_split_validation_zero_means_no_validation():
    images, labels = _numbered_samples(10)

    split = split_validation(images, labels, val_size=0, seed=0)

    assert split.val_images is None and split.val_labels is None
    np.testing.assert_array_equal(split.train_images, images)


@pytest.mark.parametrize("val_size", [10, 11])
def test_split_validation_rejects_val_size_not_below_sample_count(val_size):
    images, labels = _numbered_samples(10)

    with pytest.raises(ValueError, match=rf"data\.val_size must be smaller .*\(10\).*{val_size}"):
        split_validation(images, labels, val_size=val_size, seed=0)


def test_split_validation_rejects_negative_val_size():
    images, labels = _numbered_samples(10)

    with pytest.raises(ValueError, match=r"data\.val_size must be >= 0, got -1"):
        split_validation(images, labels, val_size=-1, seed=0)


# real MNIST


@pytest.mark.mnist
def test_load_mnist_reads_real_mnist(mnist_dir):
    # download=False: the real folder is read-only and tests never reach the internet.
    mnist = load_mnist(mnist_dir, download=False)

    assert mnist.train_images.shape == (60000, 784)
    assert mnist.test_images.shape == (10000, 784)
    assert mnist.train_labels.shape == (60000,)
    assert mnist.test_labels.shape == (10000,)
    assert mnist.train_images.dtype == np.float32
    assert mnist.test_labels.dtype == np.int64
    assert mnist.train_images.min() == 0.0
    assert mnist.train_images.max() == 1.0
    assert np.bincount(mnist.train_labels, minlength=10)[0] == 5923
    assert mnist.sha256 == MNIST_SHA256
