"""Seconds per step of `orchestrate finetune`'s loop against a bare transformers + peft loop.

Usage: python bench/finetune.py [--steps N] [--batch-size B] [--max-length L] [--rounds R]
Target: ours within 1.1x of the bare loop (median seconds per step, first step excluded).

Both train the same LoRA (r=8 on q_proj/v_proj) on the same base model (the embedded
SmolLM2-135M, converted once into the state directory), on the same batches, in this
process. Ours is ``orchestrate.finetune.training.train`` with everything the command
does per step: the device lease, MLflow metrics in a throwaway SQLite store, the
progress callback, the stop check, and checkpoints (one, at the end). The bare loop
has its batches built before the clock starts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

TARGET_RATIO = 1.1


def write_data(path: Path, count: int = 64) -> Path:
    """Chats whose answers are a few hundred tokens of code, so batches fill the window."""
    lines = []
    for i in range(count):
        body = "\n".join(f"    total += value_{j} * {i + j}  # step {j}" for j in range(12 + i % 9))
        answer = (
            f"FILE: src/module_{i}.py\n```python\ndef compute_{i}():\n    total = 0\n{body}\n```"
        )
        messages = [
            {"role": "user", "content": f"Write module {i} that adds the weighted values."},
            {"role": "assistant", "content": answer},
        ]
        lines.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(lines) + "\n")
    return path


class StepClock:
    """Wall time between consecutive steps, as the command's progress bar sees them."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._last = 0.0

    def on_start(self, first_step: int, total_steps: int, device: str) -> None:
        self._last = time.perf_counter()

    def on_step(self, report: Any) -> None:
        now = time.perf_counter()
        self.seconds.append(now - self._last)
        self._last = now


def ours(config: Any, data: Path, scratch: Path, settings: Any) -> list[float]:
    from orchestrate.finetune.data import load_dataset
    from orchestrate.finetune.tracking import MlflowTracker
    from orchestrate.finetune.training import train
    from orchestrate.safety.gpu import GpuLeaseManager

    clock = StepClock()
    dataset = load_dataset(data)
    tracker = MlflowTracker.open(
        home=scratch, tracking_uri=None, experiment="bench", run_name="bench"
    )
    with tracker:
        train(
            config,
            dataset,
            scratch / "adapter",
            leases=GpuLeaseManager.from_settings(settings),
            metrics=tracker,
            observer=clock,
            tracking_run_id=tracker.run_id,
        )
    return clock.seconds


def bare(config: Any, data: Path) -> list[float]:
    """The loop anyone would write: peft model, AdamW, linear decay, forward/backward/step."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

    from orchestrate.finetune.data import Batches, encode, load_dataset
    from orchestrate.finetune.training import resolve_device

    torch.manual_seed(config.seed)
    device, _ = resolve_device(config.device)
    tokenizer = AutoTokenizer.from_pretrained(config.base)
    model = AutoModelForCausalLM.from_pretrained(config.base, dtype=torch.float32).to(device)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    train_examples, _ = load_dataset(data).split(config.seed)
    encoded = [encode(tokenizer, example, config.max_length) for example in train_examples]
    batches = Batches(encoded, config.batch_size, int(tokenizer.pad_token_id or 0), config.seed)
    inputs = [
        batches.collate(batches.for_step(step), device) for step in range(1, config.steps + 1)
    ]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, config.steps)
    model.train()
    seconds = []
    for batch in inputs:
        started = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        float(loss.detach())
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=1, help="Repeat both, alternating order.")
    args = parser.parse_args()
    warnings.simplefilter("ignore", FutureWarning)  # peft calls an API transformers deprecates

    from orchestrate.finetune.session import resolve_base
    from orchestrate.finetune.training import TrainingConfig
    from orchestrate.llm.embedded import quiet_transformers
    from orchestrate.settings import load_settings

    quiet_transformers()
    settings = load_settings()
    config = TrainingConfig(
        base=str(resolve_base(None, settings)),
        steps=args.steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        save_every=args.steps + 1,
        device=args.device,
    )
    ours_seconds: list[float] = []
    bare_seconds: list[float] = []
    for round_number in range(args.rounds):
        # Alternate which loop goes first, so neither always gets the warmer machine.
        with tempfile.TemporaryDirectory() as scratch:
            data = write_data(Path(scratch) / "data.jsonl")
            if round_number % 2:
                bare_seconds += bare(config, data)[1:]
            ours_seconds += ours(config, data, Path(scratch), settings)[1:]
            if not round_number % 2:
                bare_seconds += bare(config, data)[1:]

    ours_median, bare_median = statistics.median(ours_seconds), statistics.median(bare_seconds)
    ratio = ours_median / bare_median
    print(
        f"LoRA r={config.lora_r} on {', '.join(config.target_modules)}, batch "
        f"{config.batch_size} x {config.max_length} tokens, {config.steps} steps x "
        f"{args.rounds} rounds (first step of each excluded), device {config.device}"
    )
    for name, seconds in (("orchestrate finetune", ours_seconds), ("bare loop", bare_seconds)):
        print(
            f"{name:<21} median {statistics.median(seconds):6.2f} s/step  "
            f"(mean {statistics.mean(seconds):.2f}, min {min(seconds):.2f})"
        )
    verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
    print(f"ratio {ratio:.3f} (target <= {TARGET_RATIO}): {verdict}")


if __name__ == "__main__":
    main()
