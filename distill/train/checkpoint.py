"""Atomic training checkpoints and the random-number state a bit-exact resume needs.

A checkpoint is a directory of `torch.save` files. It is written to a temporary sibling
and swapped in with `os.replace`, so a run killed at any moment leaves either the previous
complete checkpoint or the new complete one, never a half-written mix.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.errors import UserError
from distill.storage import replace_directory

CHECKPOINT_DIR = "checkpoint"


def checkpoint_path(work_dir: str | os.PathLike) -> Path:
    return Path(work_dir) / CHECKPOINT_DIR


def _siblings(directory: Path) -> tuple[Path, Path]:
    return directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")


def save_checkpoint(directory: Path, files: dict[str, Any]) -> None:
    """Write `{name}.pt` for each entry, then atomically replace `directory` with the result."""
    temporary, previous = _siblings(directory)
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    for name, payload in files.items():
        torch.save(payload, temporary / f"{name}.pt")
    replace_directory(temporary, directory, previous)


def load_checkpoint(directory: Path, map_location: torch.device | str) -> dict[str, Any] | None:
    """The saved files by name, or None when there is no checkpoint.

    Falls back to the previous checkpoint when a crash hit between the two renames.
    """
    _, previous = _siblings(directory)
    source = directory if directory.exists() else previous if previous.exists() else None
    if source is None:
        return None
    files: dict[str, Any] = {}
    for path in sorted(source.glob("*.pt")):
        try:
            files[path.stem] = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as error:  # any unpickling/IO failure means the same thing to the user
            raise UserError(
                f"cannot read checkpoint file {path.name}: {error}",
                str(source),
                "delete this checkpoint directory to start the stage fresh",
            ) from error
    return files


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch and CUDA generator states, in a form `weights_only` loading accepts."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
