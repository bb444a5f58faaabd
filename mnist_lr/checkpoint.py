"""Save and load a ``TrainState`` as one ``.npz`` file, written atomically.

Arrays (weights, bias, optimizer state) are stored as arrays; the epoch, the schedule's
state and the random generator's state go in a JSON string beside them, so a resumed run
continues with exactly the same numbers.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from mnist_lr.model import Params
from mnist_lr.trainer import TrainState

FORMAT_VERSION = 1


def save_state(state: TrainState, path: Path) -> None:
    """Write ``state`` to ``path``; a crash mid-write leaves the previous file intact."""
    arrays = {"params.weights": state.params.weights, "params.bias": state.params.bias}
    arrays |= {f"optimizer.{key}": value for key, value in state.optimizer_state.items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "epoch": state.epoch,
        "schedule_state": state.schedule_state,
        "rng_state": state.rng_state,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_state(path: Path) -> TrainState:
    """The state saved by ``save_state``; ValueError if the file is not one."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            arrays = {key: archive[key] for key in archive.files if key != "meta"}
    except (OSError, KeyError, ValueError) as error:
        raise ValueError(f"{path} is not a mnist-lr checkpoint: {error}") from error
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format {meta.get('format_version')}, "
                         f"this version reads {FORMAT_VERSION}")  # fmt: skip
    params = Params(arrays.pop("params.weights"), arrays.pop("params.bias"))
    optimizer_state = {key.removeprefix("optimizer."): value for key, value in arrays.items()}
    return TrainState(
        params=params,
        optimizer_state=optimizer_state,
        schedule_state=meta["schedule_state"],
        rng_state=meta["rng_state"],
        epoch=meta["epoch"],
    )
