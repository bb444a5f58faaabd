"""Read digits from image files with a run's model.

``python -m mnist_lr.predict --run <run id> digit.png [more.png ...]`` prints one line per
file: the predicted digit and its probability. Any picture Pillow reads works (PNG, JPEG,
...; any size and colour): it is first made into a 28x28 MNIST-style image by
``to_mnist``, the way the MNIST digits themselves were made.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mnist_lr import tracking

IMAGE_SIDE = 28
DIGIT_BOX = 20  # MNIST fits each digit's longer side to 20 px inside the 28x28 image
INK_LEVEL = 0.1  # after stretching to [0, 1], fainter pixels count as paper when cropping


class ImageError(ValueError):
    """An input file is missing, not an image, or shows no digit."""


def read_image(path: Path) -> Image.Image:
    """The picture in ``path`` as 8-bit grayscale; a transparent background becomes white."""
    try:
        with Image.open(path) as opened:
            opened.load()
            picture = opened
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read (PNG, JPEG, ...)") from None
    except OSError as error:
        raise ImageError(f"{path}: cannot read the image: {error}") from None
    if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        rgba = picture.convert("RGBA")
        white = Image.new("RGBA", rgba.size, "white")
        picture = Image.alpha_composite(white, rgba)
    return picture.convert("L")


def to_mnist(picture: Image.Image) -> np.ndarray:
    """``(784,)`` float32 in [0, 1], light ink on black like MNIST, from a grayscale picture.

    As MNIST was made: ink is taken as bright (the picture is inverted when its border is
    light), cropped to the ink's bounding box, scaled so its longer side is 20 px keeping
    the aspect ratio, and pasted into 28x28 with its centre of mass at the centre."""
    gray = np.asarray(picture, dtype=np.float32) / 255.0
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    paper = float(np.median(border))
    ink = 1.0 - gray if paper > 0.5 else gray
    ink = np.clip(ink - min(paper, 1.0 - paper), 0.0, None)
    if ink.max() <= 0.0:
        raise ImageError("no digit found: the image is blank")
    ink /= ink.max()

    rows = np.flatnonzero((ink > INK_LEVEL).any(axis=1))
    columns = np.flatnonzero((ink > INK_LEVEL).any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
    height, width = crop.shape
    scale = DIGIT_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    digit = Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS)
    digit = np.clip(np.asarray(digit, dtype=np.float32), 0.0, 1.0)
    return centre_by_mass(digit).reshape(-1)


def centre_by_mass(digit: np.ndarray) -> np.ndarray:
    """``digit`` (at most 20x20) pasted into a 28x28 black image so that its centre of
    mass lands on the centre, shifted back inside where that would cut it off."""
    rows, columns = np.indices(digit.shape)
    mass = digit.sum()
    centre = ((rows * digit).sum() / mass, (columns * digit).sum() / mass)
    canvas = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    top, left = (
        int(np.clip(round(IMAGE_SIDE / 2 - centre[axis]), 0, IMAGE_SIDE - digit.shape[axis]))
        for axis in (0, 1)
    )
    canvas[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return canvas


def load_images(paths: list[Path]) -> tuple[dict[Path, np.ndarray], list[str]]:
    """Each readable file as a ``(784,)`` MNIST-style image, and one message per failure."""
    images, problems = {}, []
    for path in paths:
        try:
            images[path] = to_mnist(read_image(path))
        except ImageError as error:
            message = str(error)
            problems.append(message if message.startswith(str(path)) else f"{path}: {message}")
    return images, problems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_lr.predict",
        description="Predict the digit in each image file with the model a training run "
        "logged. Images of any size and colour are converted to 28x28 grayscale the way "
        "MNIST digits were (inverted if the background is light, cropped to the ink, "
        "scaled to 20 px, centred by centre of mass).",
        epilog="example: python -m mnist_lr.predict --run 0123abcd digit.png",
    )
    parser.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...)")
    parser.add_argument("--run", required=True, help="the run id whose model to use")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)",
    )
    return parser.parse_args(argv)


def store_problem(tracking_uri: str) -> str | None:
    """Why a local SQLite store cannot hold the run (it does not exist), else None; without
    this check MLflow would create an empty store and only then say the run is missing."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not path.is_file():
            return (
                f"no MLflow store at {path}: run this in the folder you trained in, or "
                "pass --tracking-uri"
            )
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    images, problems = load_images(args.images)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not images:
        return 1

    tracking_uri = tracking.resolve_tracking_uri(args.tracking_uri, Path.cwd())
    problem = store_problem(tracking_uri)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    from mnist_lr.serving import load_run_model

    try:
        model = load_run_model(args.run, tracking_uri)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    table = model.predict(np.stack(list(images.values())))
    for path, row in zip(images, table.itertuples(), strict=True):
        print(f"{path}: {row.digit} (probability {row.probability:.4f})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
