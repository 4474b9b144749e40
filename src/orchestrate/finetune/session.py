"""One fine-tune from the command's flags to a saved adapter and a finished MLflow run.

It decides what to train (a fresh start, or the latest checkpoint of ``--output`` with
the settings it was made with), resolves the base model (the embedded SmolLM2 folder by
default), opens the MLflow run and takes the device lease through ``training.train``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrate.errors import UserInputError
from orchestrate.finetune.checkpoints import CheckpointState, latest_checkpoint
from orchestrate.finetune.data import Dataset, load_dataset
from orchestrate.finetune.training import TrainingConfig, TrainingObserver, TrainingResult, train

if TYPE_CHECKING:
    import threading

    from orchestrate.safety.gpu import GpuLeaseManager
    from orchestrate.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "orchestrate-finetune"
# What a resumed fine-tune may change; everything else must match its checkpoint.
CHANGEABLE_ON_RESUME = ("steps", "save_every")


@dataclass(frozen=True)
class FinetuneRequest:
    """The command's flags; a ``None`` in ``overrides`` means the flag was not given."""

    data: Path
    output: Path
    experiment: str = DEFAULT_EXPERIMENT
    resume: bool = False
    base: str | None = None
    overrides: dict[str, Any] | None = None


@dataclass(frozen=True)
class FinetunePlan:
    """What will run: the settings, the data, and the checkpoint to continue, if any."""

    config: TrainingConfig
    dataset: Dataset
    checkpoint: CheckpointState | None
    warnings: list[str]


@dataclass(frozen=True)
class FinetuneOutcome:
    result: TrainingResult
    tracking_uri: str
    tracking_run_id: str
    experiment: str


def plan_finetune(request: FinetuneRequest, settings: Settings) -> FinetunePlan:
    """Check the flags and the data first, then find the base model (converted once)."""
    overrides = {k: v for k, v in (request.overrides or {}).items() if v is not None}
    _check_values(overrides)
    dataset = load_dataset(request.data)  # before the base model, which may take a while
    warnings = list(dataset.problems)
    if request.resume:
        checkpoint = latest_checkpoint(request.output)
        if checkpoint is None:
            raise UserInputError(
                f"--resume: no checkpoint in {request.output}; start without --resume"
            )
        config = _resumed_config(checkpoint, overrides, request.base)
    else:
        _check_fresh_output(request.output)
        checkpoint = None
        base = resolve_base(request.base, settings)
        config = TrainingConfig(base=str(base), **overrides)
    if checkpoint is not None and checkpoint.dataset_sha256 != dataset.sha256:
        warnings.append("the data differs from the data the checkpoint was trained on")
    return FinetunePlan(config, dataset, checkpoint, warnings)


def run_finetune(
    request: FinetuneRequest,
    plan: FinetunePlan,
    settings: Settings,
    *,
    observer: TrainingObserver | None = None,
    stop: threading.Event | None = None,
) -> FinetuneOutcome:
    """Train under a device lease, recording everything in one MLflow run."""
    from orchestrate.finetune.tracking import MlflowTracker
    from orchestrate.safety.gpu import GpuLeaseManager

    checkpoint = plan.checkpoint
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    tracker = MlflowTracker.open(
        home=settings.home,
        tracking_uri=settings.mlflow_tracking_uri,
        experiment=request.experiment,
        run_name=f"{request.output.name}-{stamp}",
        resume_run_id=checkpoint.tracking_run_id if checkpoint else None,
    )
    with tracker:
        tracker.log_params(_params(request, plan))
        result = train(
            plan.config,
            plan.dataset,
            request.output,
            leases=_timed_leases(GpuLeaseManager.from_settings(settings), settings),
            metrics=tracker,
            observer=observer,
            stop=stop,
            resume_from=checkpoint,
            tracking_run_id=tracker.run_id,
        )
        tracker.log_metrics(_summary_metrics(result), step=result.last_step)
        tracker.set_tags({"device": result.device, "dtype": result.dtype})
        for path in sorted(request.output.iterdir()):
            if path.is_file():
                tracker.log_artifact(path, "adapter")
    return FinetuneOutcome(result, tracker.tracking_uri, tracker.run_id, request.experiment)


def resolve_base(base: str | None, settings: Settings) -> Path:
    """A Hugging Face folder: the embedded model's (converted once) unless --base names one."""
    from orchestrate.llm.embedded import (
        BUNDLED_NAME,
        checked_source,
        locate_embedded_model,
        model_folder,
    )

    if base is None or base in (BUNDLED_NAME, f"embedded:{BUNDLED_NAME}"):
        source = locate_embedded_model(BUNDLED_NAME, override=settings.embedded_model)
    else:
        source = checked_source(Path(base).expanduser(), "--base")
    return model_folder(source, settings.models_dir)


def _resumed_config(
    checkpoint: CheckpointState, overrides: dict[str, Any], base: str | None
) -> TrainingConfig:
    saved = dict(checkpoint.config)
    saved["target_modules"] = tuple(saved.get("target_modules", ()))
    known = {item.name for item in fields(TrainingConfig)}
    config = TrainingConfig(**{k: v for k, v in saved.items() if k in known})
    if base is not None:
        raise UserInputError("--resume continues with the checkpoint's base model; drop --base")
    for key, value in overrides.items():
        if key not in CHANGEABLE_ON_RESUME and getattr(config, key) != value:
            flag = "--" + key.replace("_", "-")
            raise UserInputError(
                f"{flag} {value} differs from the checkpoint's {getattr(config, key)}; "
                f"drop {flag} or start a new --output"
            )
    config = replace(config, **{k: v for k, v in overrides.items() if k in CHANGEABLE_ON_RESUME})
    if checkpoint.step >= config.steps:
        raise UserInputError(
            f"the checkpoint is at step {checkpoint.step} of {config.steps}; "
            f"give --steps above {checkpoint.step} to train further"
        )
    return config


def _check_fresh_output(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise UserInputError(f"--output {output} is a file; give a folder")
    if latest_checkpoint(output) is not None or (output / "adapter_config.json").exists():
        raise UserInputError(
            f"--output {output} already holds a fine-tune; add --resume to continue it, "
            f"or choose another folder"
        )


def _check_values(overrides: dict[str, Any]) -> None:
    """Flags that must be positive, checked before anything loads."""
    for key in ("steps", "batch_size", "max_length", "lora_r", "lora_alpha", "save_every"):
        if key in overrides and overrides[key] < 1:
            raise UserInputError(
                f"--{key.replace('_', '-')} must be at least 1, got {overrides[key]}"
            )
    if "learning_rate" in overrides and not 0 < overrides["learning_rate"] < 1:
        raise UserInputError(
            f"--learning-rate must be between 0 and 1, got {overrides['learning_rate']}"
        )
    if "max_length" in overrides and overrides["max_length"] < 8:
        raise UserInputError(f"--max-length must be at least 8, got {overrides['max_length']}")
    if overrides.get("device", "auto") not in ("auto", "cpu", "cuda", "mps"):
        raise UserInputError(f"--device must be auto, cpu, cuda or mps, got {overrides['device']}")


def _params(request: FinetuneRequest, plan: FinetunePlan) -> dict[str, Any]:
    train_examples, eval_examples = plan.dataset.split(plan.config.seed)
    return {
        **plan.config.as_dict(),
        "data": str(request.data),
        "dataset_sha256": plan.dataset.sha256,
        "train_examples": len(train_examples),
        "eval_examples": len(eval_examples),
    }


def _summary_metrics(result: TrainingResult) -> dict[str, float]:
    metrics = {
        "peak_memory_mib": result.peak_memory_mib,
        "mean_tokens_per_second": result.tokens_per_second,
        "seconds_per_step": result.seconds_per_step,
        "lease_mib": float(result.lease_mib),
    }
    if result.eval_loss_before is not None:
        metrics["eval_loss_before"] = result.eval_loss_before
    metrics["eval_loss_after"] = result.eval_loss_after
    return metrics


def _timed_leases(leases: GpuLeaseManager, settings: Settings) -> GpuLeaseManager:
    """Report the wait for the device to `orchestrate metrics serve`, like a build does."""
    from orchestrate.observe.metrics import metrics_directory, metrics_for

    wait = metrics_for(metrics_directory(settings.home)).gpu_lease_wait
    leases.on_granted = lambda device, seconds: wait.labels(device).observe(seconds)
    return leases
