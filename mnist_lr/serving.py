"""The trained classifier as an MLflow pyfunc model.

Each run logs its model under ``model``; anyone with numpy, pandas and mlflow can use it::

    model = mlflow.pyfunc.load_model("runs:/<run id>/model")
    table = model.predict(images)  # images: (n_images, 784) float32 in [0, 1]

``table`` is a DataFrame with one row per image: ``digit`` (the predicted digit, int64),
``probability`` (its softmax probability) and ``p0`` .. ``p9`` (all ten probabilities).
A DataFrame of 784 pixel columns is accepted as input too, and so is the JSON of
``mlflow models serve`` (``{"inputs": [[...784 numbers...], ...]}`` or ``dataframe_split``).

This file is also the model's code (MLflow's models-from-code): MLflow copies it into the
logged model and runs it when the model is loaded, with the weights as an artifact. So it
imports nothing from ``mnist_lr``, and loading needs no ``code_paths``.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature, set_model
from mlflow.types import ColSpec, Schema, TensorSpec

N_PIXELS = 784  # 28 x 28, rows of pixels one after the other
N_DIGITS = 10
WEIGHTS_ARTIFACT = "weights"  # an .npz with ``weights`` (784, 10) and ``bias`` (10,)
OUTPUT_COLUMNS = ["digit", "probability", *(f"p{digit}" for digit in range(N_DIGITS))]
REQUIREMENTS = ("mlflow", "numpy", "pandas")


class DigitClassifier(mlflow.pyfunc.PythonModel):
    """Softmax regression ``probabilities = softmax(images @ W + b)`` as a pyfunc model.

    Built with ``weights`` ``(784, 10)`` and ``bias`` ``(10,)``, or empty and filled by
    ``load_context`` from the model's ``weights`` artifact when MLflow loads it."""

    def __init__(self, weights: np.ndarray | None = None, bias: np.ndarray | None = None):
        self.weights = weights
        self.bias = bias

    def load_context(self, context) -> None:
        with np.load(context.artifacts[WEIGHTS_ARTIFACT]) as arrays:
            self.weights = arrays["weights"].astype(np.float32)
            self.bias = arrays["bias"].astype(np.float32)

    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        """One row per image of ``model_input`` ``(n_images, 784)``: ``digit``,
        ``probability`` and ``p0`` .. ``p9``."""
        probabilities = self.probabilities(as_images(model_input))
        digits = probabilities.argmax(axis=1)
        table = pd.DataFrame(probabilities, columns=OUTPUT_COLUMNS[2:])
        table.insert(0, "digit", digits.astype(np.int64))
        table.insert(1, "probability", probabilities[np.arange(len(digits)), digits])
        return table

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """``(n_images, 10)`` softmax probabilities. The same stable softmax as
        ``mnist_lr.model``, repeated here because this file must stand alone."""
        if self.weights is None:
            raise ValueError("the model has no weights: build it with them or load it")
        scores = images @ self.weights + self.bias
        scores -= scores.max(axis=1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1, keepdims=True)
        return scores


def as_images(model_input) -> np.ndarray:
    """``(n_images, 784)`` float32 from an array or a DataFrame of 784 pixel columns."""
    images = np.asarray(model_input, dtype=np.float32)
    if images.ndim == 1 and images.size == N_PIXELS:
        images = images[None, :]
    if images.ndim != 2 or images.shape[1] != N_PIXELS:
        raise ValueError(
            f"expected images of shape (n_images, {N_PIXELS}) (28x28 pixels in [0, 1], "
            f"row by row), got shape {images.shape}"
        )
    return images


def signature() -> ModelSignature:
    """Input: a float32 tensor ``(-1, 784)``; output: the prediction table's columns."""
    outputs = [ColSpec("long", "digit"), ColSpec("float", "probability")]
    outputs += [ColSpec("float", name) for name in OUTPUT_COLUMNS[2:]]
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, N_PIXELS))]),
        outputs=Schema(outputs),
    )


def model_options(weights_file: Path, example_images: np.ndarray) -> dict:
    """What ``mlflow.pyfunc.save_model`` needs to save this model from its weights file
    (``.npz`` with ``weights`` and ``bias``) with a few images as the input example.

    The requirements are pinned to the versions installed here; naming them saves MLflow
    from inferring them by loading the model in a subprocess, which takes seconds."""
    return {
        "python_model": str(Path(__file__).resolve()),
        "artifacts": {WEIGHTS_ARTIFACT: str(weights_file)},
        "signature": signature(),
        "input_example": as_images(example_images),
        "pip_requirements": [f"{package}=={version(package)}" for package in REQUIREMENTS],
    }


def load_run_model(run_id: str, tracking_uri: str) -> mlflow.pyfunc.PyFuncModel:
    """The ``model`` of run ``run_id`` in the store ``tracking_uri``; ValueError naming the
    run and the store when it cannot be had (unknown run, a run logged without a model)."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    try:
        folder = mlflow.artifacts.download_artifacts(
            artifact_uri=f"runs:/{run_id}/model", tracking_uri=tracking_uri
        )
        return mlflow.pyfunc.load_model(folder)
    except (MlflowException, OSError) as error:
        reason = getattr(error, "message", None) or str(error)
        raise ValueError(
            f"cannot load the model of run {run_id!r} from {tracking_uri}: {reason}. "
            "Check the run id (mlflow ui shows it) and the store (--tracking-uri)."
        ) from error


# MLflow runs this file under a module name of its own when it loads the model and takes
# the model given here; imported as part of mnist_lr, the file leaves MLflow's slot alone.
if __name__ != "mnist_lr.serving":
    set_model(DigitClassifier())
