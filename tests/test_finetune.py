"""`orchestrate finetune` on the real embedded model: a few CPU steps of LoRA, end to end.

The GGUF is converted once for the module (~20 s) and passed as --base; one fine-tune of
8 steps (batch 2, 64 tokens) is shared by the tests that only read its results.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from orchestrate.cli import finetune_cmd
from orchestrate.cli.app import app
from orchestrate.finetune.data import IGNORE_INDEX, Example, encode
from orchestrate.safety.gpu import DeviceCapacity, GpuLeaseManager

pytestmark = pytest.mark.embedded

runner = CliRunner()
STEPS = 8
TRAINING = ["--batch-size", "2", "--max-length", "64", "--learning-rate", "1e-3"]


@dataclass(frozen=True)
class Trained:
    home: Path
    output: Path
    data: Path
    stdout: str


def write_data(path: Path, count: int = 16) -> Path:
    """Answers in one fixed house style, easy to learn in a few steps."""
    lines = []
    for i in range(count):
        answer = f"FILE: src/module_{i}.py\n```python\nprint('house style {i}')\n```"
        messages = [
            {"role": "user", "content": f"Write module {i}."},
            {"role": "assistant", "content": answer},
        ]
        lines.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("finetune")
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith(("ORCHESTRATE_", "MLFLOW_")):
                patch.delenv(name)
        patch.chdir(folder)
        yield folder


@pytest.fixture(scope="module")
def base_folder(workspace: Path) -> Path:
    from orchestrate.llm.embedded import BUNDLED_NAME, locate_embedded_model, model_folder

    source = locate_embedded_model(BUNDLED_NAME, override=None)
    return model_folder(source, workspace / "models")


def finetune(home: Path, *args: str) -> Any:
    return runner.invoke(app, ["finetune", *args], env={"ORCHESTRATE_HOME": str(home)})


@pytest.fixture(scope="module")
def trained(workspace: Path, base_folder: Path) -> Trained:
    home, output = workspace / "home", workspace / "adapter"
    data = write_data(workspace / "data.jsonl")
    result = finetune(
        home,
        *("--data", str(data), "--base", str(base_folder), "--output", str(output)),
        *("--steps", str(STEPS), "--save-every", "4", *TRAINING),
    )
    assert result.exit_code == 0, result.output
    return Trained(home, output, data, result.stdout)


def mlflow_runs(home: Path) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("orchestrate-finetune")
    assert experiment is not None
    return list(client.search_runs([experiment.experiment_id]))


def metric_history(home: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_only_the_answer_carries_a_loss(base_folder: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_folder)
    example = Example((("user", "Say hi. " * 40), ("assistant", "Hi there!")), "test")

    encoded = encode(tokenizer, example, max_length=48)

    assert len(encoded.input_ids) == 48  # the prompt's start was cut, not the answer
    answer = [
        t
        for t, label in zip(encoded.input_ids, encoded.labels, strict=True)
        if label != IGNORE_INDEX
    ]
    assert tokenizer.decode(answer).startswith("Hi there!")
    assert encoded.labels[0] == IGNORE_INDEX


def test_the_loss_falls(trained: Trained) -> None:
    [run] = mlflow_runs(trained.home)
    losses = [value for _, value in metric_history(trained.home, run.info.run_id, "loss")]
    evals = dict(metric_history(trained.home, run.info.run_id, "eval_loss"))

    assert len(losses) == STEPS
    assert statistics.mean(losses[-3:]) < statistics.mean(losses[:3])
    assert evals[STEPS] < evals[0]


def test_the_mlflow_run_holds_parameters_metrics_and_the_adapter(trained: Trained) -> None:
    from mlflow.tracking import MlflowClient

    [run] = mlflow_runs(trained.home)
    client = MlflowClient(tracking_uri=f"sqlite:///{trained.home / 'mlflow' / 'mlflow.db'}")

    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["lora_r"] == "8" and params["steps"] == str(STEPS)
    assert params["batch_size"] == "2" and params["learning_rate"] == "0.001"
    assert len(params["dataset_sha256"]) == 64
    metrics = run.data.metrics
    for key in ("tokens_per_second", "peak_memory_mib", "eval_loss_after", "seconds_per_step"):
        assert metrics[key] > 0, key
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in artifacts
    assert "adapter/adapter_config.json" in artifacts
    assert run.info.artifact_uri.startswith((trained.home / "mlflow").resolve().as_uri())
    assert run.info.run_id in trained.stdout


def test_the_adapter_and_checkpoints_are_saved(trained: Trained) -> None:
    assert (trained.output / "adapter_model.safetensors").is_file()
    steps = sorted(path.name for path in (trained.output / "checkpoints").iterdir())
    assert steps == ["step-00000004", "step-00000008"]


def test_the_lease_wait_reaches_the_host_metrics(trained: Trained) -> None:
    from orchestrate.observe.exposition import HostCollector

    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in HostCollector(trained.home / "metrics").collect()
        for sample in family.samples
    }
    key = ("orchestrate_gpu_lease_wait_seconds_count", (("device", "cpu"),))
    assert samples[key] >= 1  # `metrics serve` sees fine-tunes as well as builds


def test_a_build_with_the_adapter_loads_it(
    trained: Trained, base_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrate.llm.backend import CompletionRequest, create_backend

    # Eight tiny steps move the weights a little: fp16 rounding (the CPU default) can hide
    # that, so look at the learnt style in full precision.
    monkeypatch.setenv("ORCHESTRATE_EMBEDDED_PRECISION", "fp32")

    def backend(adapter: Path | None) -> Any:
        return create_backend(
            "embedded:smollm2-135m",
            models_dir=trained.home / "models",
            embedded_model=base_folder,
            adapter=adapter,
        )

    plain, adapted = backend(None), backend(trained.output)
    request = CompletionRequest(
        messages=[{"role": "user", "content": "Write module 3."}], agent="test", max_tokens=12
    )
    answer = adapted.complete(request)

    assert adapted.identity != plain.identity and ":lora-" in adapted.identity
    assert answer.completion_tokens > 0
    assert "FILE" in answer.text or "module" in answer.text  # it learnt the house style


def test_ctrl_c_saves_a_checkpoint_and_resume_continues(
    workspace: Path, base_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, output = workspace / "home-resume", workspace / "resumed"
    data = write_data(workspace / "resume.jsonl", count=8)
    on_step = finetune_cmd._StepProgress.on_step
    holders: list[str] = []

    def interrupt_at_step_2(self: Any, report: Any) -> None:
        on_step(self, report)
        if report.step == 2:
            leases = GpuLeaseManager(home, capacity=lambda device: DeviceCapacity(device, 1, 1, ""))
            holders.extend(entry.holder for entry in leases.snapshot("cpu").held)
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends

    monkeypatch.setattr(finetune_cmd._StepProgress, "on_step", interrupt_at_step_2)
    first = finetune(
        home,
        *("--data", str(data), "--base", str(base_folder), "--output", str(output)),
        *("--steps", "4", *TRAINING),
    )
    monkeypatch.undo()

    assert first.exit_code == 130, first.output
    assert holders == [f"finetune {output}"]  # the device lease is held while training
    assert "--resume" in first.stderr and "Traceback" not in first.output
    assert (output / "checkpoints" / "step-00000002" / "optimizer.pt").is_file()

    second = finetune(home, "--data", str(data), "--output", str(output), "--resume")

    assert second.exit_code == 0, second.output
    assert "steps 3-4" in second.stdout
    [run] = mlflow_runs(home)  # the same MLflow run, continued
    assert [step for step, _ in metric_history(home, run.info.run_id, "loss")] == [1, 2, 3, 4]
    assert run.info.status == "FINISHED"


def test_resume_refuses_changed_settings(trained: Trained) -> None:
    result = finetune(
        trained.home,
        *("--data", str(trained.data), "--output", str(trained.output), "--resume"),
        *("--lora-r", "4", "--steps", "12"),
    )

    assert result.exit_code == 2
    assert "--lora-r 4 differs from the checkpoint's 8" in result.stderr


def test_a_resumed_run_keeps_its_adapter(
    trained: Trained, base_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The adapter is part of the response-cache key: a resumed task answered from the
    # cache shows that the resume ran on the adapted model, as the run did.
    import sqlite3

    from conftest import EXAMPLE_SPEC
    from orchestrate.store.events import read_events
    from orchestrate.store.runs import RunStatus, RunStore

    home = trained.home / "resume-adapter"
    monkeypatch.setenv("ORCHESTRATE_HOME", str(home))
    monkeypatch.setenv("ORCHESTRATE_RUNS_DIR", str(home / "runs"))
    monkeypatch.setenv("ORCHESTRATE_EMBEDDED_MODEL", str(base_folder))
    build = ["build", str(EXAMPLE_SPEC), "--max-tokens", "4", "--no-memory", "--json"]
    first = runner.invoke(app, [*build, "--adapter", str(trained.output)])
    assert first.exit_code == 0, first.output

    folder = RunStore(home / "runs").find(json.loads(first.stdout)["run_id"])
    record = folder.load()
    assert record.adapter == str(trained.output)
    # As if the process had died while the critic was answering.
    with sqlite3.connect(folder.checkpoint_path) as db:
        db.execute("DELETE FROM finished_tasks WHERE task = 'review'")
    record.status = RunStatus.FAILED
    folder.save(record)

    second = runner.invoke(app, ["resume", record.id, "--no-memory", "--json"])

    assert second.exit_code == 0, second.output
    calls = [e for e in read_events(folder.path / "events.jsonl") if e["type"] == "llm_call"]
    assert [call["cached"] for call in calls if call["task"] == "review"] == [False, True]
    assert folder.load().adapter == str(trained.output)
