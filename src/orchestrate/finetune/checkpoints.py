"""Checkpoints of a fine-tune: everything ``--resume`` needs to continue where it stopped.

A checkpoint is a folder ``<output>/checkpoints/step-NNNNNNNN/`` holding the adapter's
weights, the optimizer's and scheduler's states, the random generators' states and
``state.json`` (the step, the training settings, the dataset's hash, the MLflow run).
It is written under a temporary name and renamed, so a crash mid-save leaves the
previous checkpoint as the latest; the two newest are kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrate.errors import UserInputError

FOLDER = "checkpoints"
PREFIX = "step-"
STATE_FILE = "state.json"
KEEP = 2


@dataclass(frozen=True)
class CheckpointState:
    """What ``state.json`` says about a checkpoint."""

    path: Path
    step: int
    config: dict[str, Any]
    dataset_sha256: str
    tracking_run_id: str | None


def checkpoint_root(output: Path) -> Path:
    return output / FOLDER


def latest_checkpoint(output: Path) -> CheckpointState | None:
    """The newest complete checkpoint under ``output``, or None."""
    root = checkpoint_root(output)
    if not root.is_dir():
        return None
    for folder in sorted(root.glob(f"{PREFIX}*"), reverse=True):
        if (folder / STATE_FILE).is_file():
            return read_state(folder)
    return None


def read_state(folder: Path) -> CheckpointState:
    try:
        raw = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        return CheckpointState(
            path=folder,
            step=int(raw["step"]),
            config=dict(raw["config"]),
            dataset_sha256=str(raw["dataset_sha256"]),
            tracking_run_id=raw.get("tracking_run_id"),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserInputError(f"checkpoint {folder} is unreadable: {exc}") from exc


def save_checkpoint(
    output: Path,
    *,
    step: int,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    config: dict[str, Any],
    dataset_sha256: str,
    tracking_run_id: str | None,
) -> Path:
    """Write the checkpoint of ``step`` atomically and drop all but the newest two."""
    import torch

    root = checkpoint_root(output)
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{PREFIX}{step:08d}"
    staging = root / f".{target.name}.{os.getpid()}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging)
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        torch.save(scheduler.state_dict(), staging / "scheduler.pt")
        torch.save(_torch_rng_state(), staging / "rng.pt")
        state = {
            "step": step,
            "config": config,
            "dataset_sha256": dataset_sha256,
            "tracking_run_id": tracking_run_id,
            "python_rng": _python_rng_state(),
        }
        (staging / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for old in sorted(root.glob(f"{PREFIX}*"), reverse=True)[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def restore_checkpoint(
    state: CheckpointState, *, model: Any, optimizer: Any, scheduler: Any
) -> None:
    """Load a checkpoint's adapter, optimizer, scheduler and random states in place."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = state.path
    device = next(model.parameters()).device
    set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors"))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt"))
    rng = torch.load(folder / "rng.pt")
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    raw = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    if raw.get("python_rng") is not None:
        version, internal, gauss = raw["python_rng"]
        random.setstate((version, tuple(internal), gauss))


def _torch_rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_rng_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]
