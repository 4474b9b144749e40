"""`orchestrate finetune`: train a LoRA adapter on good answers, tracked in MLflow."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from orchestrate.cli.common import configure_logging, console, err_console, reports_errors
from orchestrate.cli.signals import stop_on_signals

if TYPE_CHECKING:
    from rich.progress import Progress

    from orchestrate.finetune.session import FinetuneOutcome, FinetunePlan, FinetuneRequest
    from orchestrate.finetune.training import StepReport
    from orchestrate.settings import Settings

MAX_WARNINGS = 10  # bad lines shown before "and N more"


@reports_errors
def finetune(
    data: Path = typer.Option(
        ..., "--data", help="JSONL (messages, or prompt/completion) or a runs folder."
    ),
    base: str | None = typer.Option(
        None, "--base", help="A Hugging Face model folder (default: the embedded SmolLM2)."
    ),
    output: Path | None = typer.Option(
        None, "--output", help="Folder for the adapter and checkpoints (default: adapters/DATA)."
    ),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps in all (default: 60)."),
    learning_rate: float | None = typer.Option(
        None, "--learning-rate", help="Peak learning rate (default: 2e-4)."
    ),
    lora_r: int | None = typer.Option(None, "--lora-r", help="LoRA rank (default: 8)."),
    lora_alpha: int | None = typer.Option(None, "--lora-alpha", help="LoRA alpha (default: 16)."),
    target_modules: list[str] | None = typer.Option(
        None,
        "--target-modules",
        help="Modules given adapters, repeated or comma-separated (default: q_proj,v_proj).",
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Examples per step (default: 4)."
    ),
    max_length: int | None = typer.Option(
        None, "--max-length", help="Tokens per example (default: 256)."
    ),
    save_every: int | None = typer.Option(
        None, "--save-every", help="Save a checkpoint every N steps (default: 50)."
    ),
    device: str | None = typer.Option(
        None, "--device", help="auto, cpu, cuda or mps (default: auto)."
    ),
    experiment: str = typer.Option(
        "orchestrate-finetune", "--experiment", help="MLflow experiment name."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the latest checkpoint in --output."
    ),
) -> None:
    """Fine-tune a LoRA adapter for the embedded model on chats or approved runs.

    Example: orchestrate finetune --data runs --steps 100 --output adapters/house-style
    """
    from orchestrate.finetune.session import FinetuneRequest, plan_finetune
    from orchestrate.settings import load_settings

    settings = load_settings()
    configure_logging(settings.log_level)
    overrides: dict[str, Any] = {
        "steps": steps,
        "learning_rate": learning_rate,
        "lora_r": lora_r,
        "lora_alpha": lora_alpha,
        "target_modules": _modules(target_modules),
        "batch_size": batch_size,
        "max_length": max_length,
        "save_every": save_every,
        "device": device,
    }
    request = FinetuneRequest(
        data=data,
        output=output or Path("adapters") / (data.stem or "data"),
        experiment=experiment,
        resume=resume,
        base=base,
        overrides=overrides,
    )
    try:
        with err_console.status("Reading the data and the base model…"):
            plan = plan_finetune(request, settings)
    except KeyboardInterrupt:
        err_console.print("interrupted before training started")
        raise typer.Exit(130) from None
    _print_warnings(plan.warnings)
    _train(request, plan, settings)


def _train(request: FinetuneRequest, plan: FinetunePlan, settings: Settings) -> None:
    from orchestrate.finetune.session import run_finetune

    stop = threading.Event()
    progress = _StepProgress(plan.config.steps)
    stopping = stop_on_signals(
        stop, stopping="stopping after this step", quitting="stopped without saving"
    )
    with stopping, progress:
        outcome = run_finetune(request, plan, settings, observer=progress, stop=stop)
    _print_summary(outcome)


def _modules(values: list[str] | None) -> tuple[str, ...] | None:
    names = [name.strip() for value in values or [] for name in value.split(",")]
    return tuple(name for name in names if name) or None


def _print_warnings(warnings: list[str]) -> None:
    for warning in warnings[:MAX_WARNINGS]:
        err_console.print(f"[yellow]skipped[/]: {warning}", highlight=False)
    if len(warnings) > MAX_WARNINGS:
        err_console.print(f"… and {len(warnings) - MAX_WARNINGS} more", highlight=False)


class _StepProgress:
    """A Rich progress bar of steps with the loss and time left; plain lines off a terminal."""

    def __init__(self, total: int) -> None:
        self._total = total
        self._bar: Progress | None = None
        self._task: Any = None
        self._every = max(1, total // 20)

    def __enter__(self) -> _StepProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def on_start(self, first_step: int, total_steps: int, device: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        if not err_console.is_terminal:
            err_console.print(f"training steps {first_step}-{total_steps} on {device}")
            return
        self._bar = Progress(
            TextColumn("step"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=err_console,
        )
        self._task = self._bar.add_task("train", total=total_steps, loss="-")
        self._bar.update(self._task, completed=first_step - 1)
        self._bar.start()

    def on_step(self, report: StepReport) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=report.step, loss=f"{report.loss:.4f}")
        elif report.step % self._every == 0 or report.step == self._total:
            err_console.print(
                f"step {report.step}/{self._total} loss {report.loss:.4f} ({report.seconds:.2f} s)",
                highlight=False,
            )


def _print_summary(outcome: FinetuneOutcome) -> None:
    result = outcome.result
    before = f"{result.eval_loss_before:.4f} -> " if result.eval_loss_before is not None else ""
    console.print(
        f"[bold]Fine-tuned[/] steps {result.first_step}-{result.last_step} on {result.device} "
        f"({result.dtype}): {result.seconds_per_step:.2f} s/step, "
        f"{result.tokens_per_second:.0f} tokens/s, peak {result.peak_memory_mib:.0f} MiB",
        highlight=False,
    )
    console.print(f"  eval loss {before}{result.eval_loss_after:.4f}", highlight=False)
    console.print(f"  adapter: {result.output}", highlight=False)
    console.print(
        f"  MLflow: run {outcome.tracking_run_id} of experiment '{outcome.experiment}' "
        f"in {outcome.tracking_uri}",
        highlight=False,
    )
    console.print(
        f"  use it: orchestrate build SPEC --model embedded:smollm2-135m --adapter {result.output}",
        highlight=False,
    )
