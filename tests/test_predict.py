"""Tests for mnist_lr.predict: MNIST-style conversion of image files and the command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

# pytest puts tests/ on sys.path (no __init__.py): share the trained-run helpers.
from test_serving import TrainedRun, train_one_epoch

from mnist_lr.data import load_mnist
from mnist_lr.predict import ImageError, main, read_image, to_mnist

N_DIGITS = 10


def bar_picture(size=(300, 200), box=(100, 20, 140, 180), ink=0, paper=255, mode="L"):
    """A ``size`` picture of ``paper`` with one filled rectangle of ``ink`` at ``box``."""
    picture = Image.new(mode, size, paper)
    picture.paste(ink, box)
    return picture


def as_grid(image: np.ndarray) -> np.ndarray:
    return image.reshape(28, 28)


def centre_of_mass(grid: np.ndarray) -> tuple[float, float]:
    rows, columns = np.indices(grid.shape)
    return (rows * grid).sum() / grid.sum(), (columns * grid).sum() / grid.sum()


def ink_box(grid: np.ndarray, level: float = 0.1) -> tuple[int, int]:
    """Height and width of the bounding box of pixels above ``level``."""
    rows = np.flatnonzero((grid > level).any(axis=1))
    columns = np.flatnonzero((grid > level).any(axis=0))
    return rows[-1] - rows[0] + 1, columns[-1] - columns[0] + 1


def test_to_mnist_scales_the_longer_side_to_20_and_centres_the_mass():
    grid = as_grid(to_mnist(bar_picture()))

    assert grid.dtype == np.float32
    assert grid.min() >= 0.0 and grid.max() <= 1.0
    height, width = ink_box(grid)
    assert height == 20
    assert 4 <= width <= 6  # 40 x 160 keeps its 1:4 aspect
    np.testing.assert_allclose(centre_of_mass(grid), (14.0, 14.0), atol=0.6)


def test_to_mnist_same_digit_whether_dark_on_light_or_light_on_dark():
    dark_on_light = to_mnist(bar_picture(ink=0, paper=255))
    light_on_dark = to_mnist(bar_picture(ink=255, paper=0))

    np.testing.assert_allclose(dark_on_light, light_on_dark, atol=1e-6)
    assert as_grid(dark_on_light)[0, 0] == 0.0  # paper is black, as in MNIST


def test_to_mnist_ignores_where_on_the_page_the_digit_is():
    left = to_mnist(bar_picture(box=(10, 10, 50, 170)))
    right = to_mnist(bar_picture(box=(250, 30, 290, 190)))

    np.testing.assert_allclose(left, right, atol=1e-6)


def test_read_image_colour_and_transparency(tmp_path: Path):
    coloured = bar_picture(ink=(200, 0, 0), paper=(250, 250, 210), mode="RGB")
    transparent = bar_picture(ink=(0, 0, 0, 255), paper=(0, 0, 0, 0), mode="RGBA")
    coloured.save(tmp_path / "coloured.png")
    transparent.save(tmp_path / "transparent.png")
    expected = to_mnist(bar_picture())

    for name in ("coloured.png", "transparent.png"):
        converted = to_mnist(read_image(tmp_path / name))
        np.testing.assert_allclose(converted, expected, atol=0.02, err_msg=name)


def test_to_mnist_blank_picture_is_an_error():
    with pytest.raises(ImageError, match="no digit found"):
        to_mnist(Image.new("L", (50, 50), 255))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.png", None, "missing.png: no such file"),
        ("notes.png", b"not a picture", "notes.png: not an image Pillow can read"),
        ("blank.png", "blank", "blank.png: no digit found"),
    ],
)
def test_main_bad_image_exits_non_zero_with_message(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    if content == "blank":
        Image.new("L", (40, 40), 255).save(path)
    elif content is not None:
        path.write_bytes(content)

    code = main(["--run", "0" * 32, "--tracking-uri", f"sqlite:///{tmp_path}/x.db", str(path)])

    assert code != 0
    assert message in capsys.readouterr().err


def test_main_missing_store_exits_non_zero(tmp_path: Path, capsys):
    bar_picture().save(tmp_path / "digit.png")
    store = f"sqlite:///{tmp_path}/none.db"

    code = main(["--run", "0" * 32, "--tracking-uri", store, str(tmp_path / "digit.png")])

    assert code != 0
    assert f"no MLflow store at {tmp_path}/none.db" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained_run(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    folder = tmp_path_factory.mktemp("predict")
    run_id, tracking_uri = train_one_epoch(mnist_dir, folder)
    weights_file = MlflowClient(tracking_uri).download_artifacts(run_id, "weights.npz", folder)
    with np.load(weights_file) as arrays:
        weights, bias = arrays["weights"], arrays["bias"]
    images = load_mnist(mnist_dir, download=False).test_images
    return TrainedRun(run_id, tracking_uri, folder, images, weights, bias)


def write_scanned_digits(images: np.ndarray, folder: Path) -> list[Path]:
    """MNIST digits as a person's scans: 112x112, black ink on white paper."""
    paths = []
    for index, image in enumerate(images):
        pixels = 255 - np.round(image.reshape(28, 28) * 255).astype(np.uint8)
        scan = Image.fromarray(pixels).resize((112, 112), Image.Resampling.BICUBIC)
        scan.save(folder / f"digit{index}.png")
        paths.append(folder / f"digit{index}.png")
    return paths


def run_predict(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mnist_lr.predict", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.mnist
@pytest.mark.slow
def test_predict_reads_scanned_mnist_digits_like_the_originals(trained_run: TrainedRun):
    originals = trained_run.images[:N_DIGITS]
    paths = write_scanned_digits(originals, trained_run.folder)

    completed = run_predict(
        "--run",
        trained_run.run_id,
        "--tracking-uri",
        trained_run.tracking_uri,
        *map(str, paths),
        cwd=trained_run.folder,
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [str(path) for path in paths]
    predicted = [int(line.split(": ")[1].split()[0]) for line in lines]
    probabilities = [float(line.rsplit(" ", 1)[1].rstrip(")")) for line in lines]
    expected = trained_run.expected_digits(originals)
    assert np.sum(np.array(predicted) == expected) >= N_DIGITS - 1, (predicted, expected)
    assert all(0.1 <= probability <= 1.0 for probability in probabilities)


@pytest.mark.mnist
@pytest.mark.slow
def test_predict_unknown_run_exits_non_zero(trained_run: TrainedRun):
    (path,) = write_scanned_digits(trained_run.images[:1], trained_run.folder)

    completed = run_predict(
        "--run", "f" * 32, "--tracking-uri", trained_run.tracking_uri, str(path),
        cwd=trained_run.folder,
    )  # fmt: skip

    assert completed.returncode == 1
    assert f"cannot load the model of run '{'f' * 32}'" in completed.stderr
    assert "not found" in completed.stderr
    assert completed.stdout == ""


@pytest.mark.mnist
@pytest.mark.slow
def test_predict_default_store_is_the_launch_folders(trained_run: TrainedRun):
    """Run in the folder trained in, --tracking-uri is not needed."""
    (path,) = write_scanned_digits(trained_run.images[:1], trained_run.folder)

    completed = run_predict("--run", trained_run.run_id, path.name, cwd=trained_run.folder)

    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.startswith(f"{path.name}: ")
