"""The training loop: LoRA (peft) on a causal language model, torch AdamW, one device.

A plain loop rather than transformers' ``Trainer``: each step is one forward, one
backward and one optimizer step, with nothing else per step than a metrics record, so
its cost is the model's (``bench/finetune.py`` compares it with a bare loop). The
batch of step ``s`` depends only on the seed and ``s``, so a resumed fine-tune sees the
same batches it would have seen without the interruption.
"""

from __future__ import annotations

import logging
import resource
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from orchestrate.errors import OrchestrateError, TaskCancelledError, UserInputError
from orchestrate.finetune.checkpoints import CheckpointState, restore_checkpoint, save_checkpoint
from orchestrate.finetune.data import Batches, Dataset, EncodedExample, encode

logger = logging.getLogger(__name__)

MIB = 1024**2
ADAPTER_METADATA = "finetune.json"


@dataclass(frozen=True)
class TrainingConfig:
    """How to train; stored in every checkpoint and logged as MLflow parameters."""

    base: str  # a Hugging Face model folder
    steps: int = 60
    learning_rate: float = 2e-4
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    batch_size: int = 4
    max_length: int = 256
    warmup_steps: int = 0
    save_every: int = 50
    seed: int = 0
    device: str = "auto"

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["target_modules"] = list(self.target_modules)
        return values


@dataclass(frozen=True)
class StepReport:
    step: int
    loss: float
    seconds: float
    tokens: int


class TrainingObserver(Protocol):
    """Told when training starts and after every step (the CLI draws a progress bar)."""

    def on_start(self, first_step: int, total_steps: int, device: str) -> None: ...

    def on_step(self, report: StepReport) -> None: ...


class MetricsSink(Protocol):
    """Where metrics go (MLflow, in the CLI)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


@dataclass
class TrainingResult:
    output: Path
    first_step: int
    last_step: int
    device: str
    dtype: str
    eval_loss_before: float | None
    eval_loss_after: float
    losses: list[float] = field(default_factory=list)
    seconds_per_step: float = 0.0
    tokens_per_second: float = 0.0
    peak_memory_mib: float = 0.0
    lease_mib: int = 0


def resolve_device(requested: str) -> tuple[str, str]:
    """The device to train on and its compute dtype: bf16 only on CUDA that supports it."""
    import torch

    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    device = requested
    if requested == "auto":
        device = "cuda" if cuda else "mps" if mps else "cpu"
    elif (requested == "cuda" and not cuda) or (requested == "mps" and not mps):
        raise UserInputError(f"--device {requested}: no {requested.upper()} device here")
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return device, "bfloat16"
    return device, "float32"


def load_base(base: str, dtype: str) -> tuple[Any, Any]:
    """The base model and its tokenizer from a local folder, on the CPU."""
    import torch

    from orchestrate.llm.embedded import quiet_transformers

    quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
        model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as exc:
        raise UserInputError(f"cannot load the base model from {base}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def with_lora(model: Any, config: TrainingConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
    )
    try:
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in 5.x
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(model, lora)
    except ValueError as exc:  # a target module the model does not have
        raise UserInputError(f"--target-modules: {exc}") from exc


def estimate_lease_mib(model: Any, config: TrainingConfig) -> int:
    """Weights, the adapter's gradients and AdamW moments, and one step's activations.

    Per token and layer a decoder keeps about a dozen hidden-sized tensors and a few
    MLP-sized ones for the backward pass; the logits over the vocabulary are kept in
    fp32 with their softmax and gradient. A quarter more covers the allocator's slack.
    """
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    shape = model.config
    hidden = int(getattr(shape, "hidden_size", 1024))
    mlp = int(getattr(shape, "intermediate_size", 4 * hidden))
    layers = int(getattr(shape, "num_hidden_layers", 24))
    vocab = int(getattr(shape, "vocab_size", 32000))
    width = next(model.parameters()).element_size()
    tokens = config.batch_size * config.max_length
    activations = tokens * layers * (12 * hidden + 4 * mlp) * width + tokens * vocab * 4 * 4
    return max(1, int((weights + trainable * 12 + activations) * 1.25) // MIB)


def make_optimizer(model: Any, config: TrainingConfig) -> tuple[Any, Any]:
    """AdamW on the adapter's weights, with linear warm-up then linear decay to zero."""
    import torch

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.0)
    warmup, total = config.warmup_steps, config.steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train(
    config: TrainingConfig,
    dataset: Dataset,
    output: Path,
    *,
    leases: Any = None,
    metrics: MetricsSink | None = None,
    observer: TrainingObserver | None = None,
    stop: threading.Event | None = None,
    resume_from: CheckpointState | None = None,
    tracking_run_id: str | None = None,
) -> TrainingResult:
    """Fine-tune ``config.base`` on ``dataset`` and save the adapter in ``output``.

    The model is loaded on the CPU and moves to the device only once the lease, sized
    from it, is granted; the lease is held until the adapter is saved.
    """
    import torch

    torch.manual_seed(config.seed)
    device, dtype = resolve_device(config.device)
    model, tokenizer = load_base(config.base, dtype)
    train_set, eval_set = _encoded(dataset, tokenizer, config)
    model = with_lora(model, config)
    lease_mib = estimate_lease_mib(model, config)
    lease = leases.lease(f"finetune {output}", device, lease_mib) if leases else nullcontext()
    with lease:
        model.to(device)
        optimizer, scheduler = make_optimizer(model, config)
        if resume_from is not None:
            restore_checkpoint(resume_from, model=model, optimizer=optimizer, scheduler=scheduler)
        first = resume_from.step + 1 if resume_from is not None else 1
        batches = Batches(train_set, config.batch_size, int(tokenizer.pad_token_id), config.seed)
        loop = _Loop(config, model, optimizer, scheduler, batches, device, dtype, metrics)
        before = None if resume_from else loop.eval_loss(eval_set, step=0)
        if observer is not None:
            observer.on_start(first, config.steps, device)
        reports = list(loop.steps(first, observer, stop, output, dataset.sha256, tracking_run_id))
        after = loop.eval_loss(eval_set, step=config.steps)
        loop.save(output, config.steps, dataset.sha256, tracking_run_id)
        _save_adapter(model, output, config, dataset.sha256)
    return _result(output, first, device, dtype, before, after, reports, lease_mib)


def _encoded(
    dataset: Dataset, tokenizer: Any, config: TrainingConfig
) -> tuple[list[EncodedExample], list[EncodedExample]]:
    train_examples, eval_examples = dataset.split(config.seed)
    train_set = [encode(tokenizer, example, config.max_length) for example in train_examples]
    eval_set = [encode(tokenizer, example, config.max_length) for example in eval_examples]
    train_set = [example for example in train_set if example.trained_tokens]
    eval_set = [example for example in eval_set if example.trained_tokens]
    if not train_set or not eval_set:
        raise UserInputError(
            f"no answer tokens left within --max-length {config.max_length}; raise it"
        )
    return train_set, eval_set


class _Loop:
    """The model, optimizer and batches of one fine-tune, stepped and evaluated."""

    def __init__(
        self,
        config: TrainingConfig,
        model: Any,
        optimizer: Any,
        scheduler: Any,
        batches: Batches,
        device: str,
        dtype: str,
        metrics: MetricsSink | None,
    ) -> None:
        self.config, self.model, self.batches = config, model, batches
        self.optimizer, self.scheduler = optimizer, scheduler
        self.device, self.dtype, self.metrics = device, dtype, metrics

    def steps(
        self,
        first: int,
        observer: TrainingObserver | None,
        stop: threading.Event | None,
        output: Path,
        dataset_sha256: str,
        tracking_run_id: str | None,
    ) -> Iterator[StepReport]:
        for step in range(first, self.config.steps + 1):
            report = self.step(step)
            self._log(
                {
                    "loss": report.loss,
                    "tokens_per_second": report.tokens / report.seconds,
                    "learning_rate": float(self.scheduler.get_last_lr()[0]),
                },
                step,
            )
            if observer is not None:
                observer.on_step(report)
            yield report
            if stop is not None and stop.is_set() and step < self.config.steps:
                folder = self.save(output, step, dataset_sha256, tracking_run_id)
                raise TaskCancelledError(
                    f"interrupted after step {step}; checkpoint in {folder}; "
                    f"run the same command with --resume to continue"
                )
            if step % self.config.save_every == 0 and step < self.config.steps:
                self.save(output, step, dataset_sha256, tracking_run_id)

    def step(self, step: int) -> StepReport:
        started = time.perf_counter()
        self.model.train()
        inputs = self.batches.collate(self.batches.for_step(step), self.device)
        with self._autocast():
            loss = self.model(**inputs).loss
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        if value != value:  # NaN
            raise OrchestrateError(f"the loss became NaN at step {step}; lower --learning-rate")
        tokens = int(inputs["attention_mask"].sum())
        return StepReport(step, value, time.perf_counter() - started, tokens)

    def eval_loss(self, examples: list[EncodedExample], *, step: int) -> float:
        """The mean loss on the held-out examples, batch by batch, without dropout."""
        import torch

        self.model.eval()
        total, count = 0.0, 0
        size = self.config.batch_size
        with torch.no_grad(), self._autocast():
            for start in range(0, len(examples), size):
                batch = examples[start : start + size]
                inputs = self.batches.collate(batch, self.device)
                total += float(self.model(**inputs).loss) * len(batch)
                count += len(batch)
        self._log({"eval_loss": total / count}, step)
        return total / count

    def save(self, output: Path, step: int, dataset_sha256: str, run_id: str | None) -> Path:
        return save_checkpoint(
            output,
            step=step,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            config=self.config.as_dict(),
            dataset_sha256=dataset_sha256,
            tracking_run_id=run_id,
        )

    def _autocast(self) -> AbstractContextManager[Any]:
        import torch

        if self.dtype == "bfloat16":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _log(self, values: dict[str, float], step: int) -> None:
        if self.metrics is not None:
            self.metrics.log_metrics(values, step)


def _save_adapter(model: Any, output: Path, config: TrainingConfig, dataset_sha256: str) -> None:
    import json

    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    metadata = {"config": config.as_dict(), "dataset_sha256": dataset_sha256}
    (output / ADAPTER_METADATA).write_text(json.dumps(metadata, indent=2), encoding="utf-8")


def peak_memory_mib(device: str) -> float:
    """The most memory this process held: the allocator's peak on CUDA, else peak RSS."""
    import torch

    if device.startswith("cuda"):
        return float(torch.cuda.max_memory_allocated()) / MIB
    if device == "mps":
        return float(torch.mps.driver_allocated_memory()) / MIB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (MIB if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux


def _result(
    output: Path,
    first: int,
    device: str,
    dtype: str,
    before: float | None,
    after: float,
    reports: list[StepReport],
    lease_mib: int,
) -> TrainingResult:
    seconds = sum(report.seconds for report in reports)
    tokens = sum(report.tokens for report in reports)
    return TrainingResult(
        output=output,
        first_step=first,
        last_step=reports[-1].step if reports else first - 1,
        device=device,
        dtype=dtype,
        eval_loss_before=before,
        eval_loss_after=after,
        losses=[report.loss for report in reports],
        seconds_per_step=seconds / len(reports) if reports else 0.0,
        tokens_per_second=tokens / seconds if seconds else 0.0,
        peak_memory_mib=peak_memory_mib(device),
        lease_mib=lease_mib,
    )
