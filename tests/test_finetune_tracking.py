"""MLflow tracking of fine-tunes: a serverless SQLite store by default, one run per fine-tune.

Real MLflow against a real SQLite store; no model is trained here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrate.errors import TaskCancelledError
from orchestrate.finetune.tracking import MlflowTracker, default_tracking_uri

LOG_FROM_A_PROCESS = """
import sys
from pathlib import Path
from orchestrate.finetune.tracking import MlflowTracker

home, name = Path(sys.argv[1]), sys.argv[2]
with MlflowTracker.open(home=home, tracking_uri=None, experiment="shared", run_name=name) as run:
    run.log_params({"name": name})
    for step in range(1, 4):
        run.log_metrics({"loss": float(len(name) + step)}, step)
print(run.run_id)
"""


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_the_default_store_is_sqlite_in_the_state_directory(tmp_path: Path) -> None:
    with MlflowTracker.open(
        home=tmp_path, tracking_uri=None, experiment="exp", run_name="one"
    ) as tracker:
        tracker.log_params({"lora_r": 8, "target_modules": ["q_proj", "v_proj"]})
        tracker.log_metrics({"loss": 2.5}, step=1)
        artifact = tmp_path / "adapter_config.json"
        artifact.write_text("{}")
        tracker.log_artifact(artifact, "adapter")

    assert tracker.tracking_uri == default_tracking_uri(tmp_path)
    assert (tmp_path / "mlflow" / "mlflow.db").is_file()
    assert (tmp_path / "mlflow" / "artifacts").is_dir()
    run = client_for(tracker.tracking_uri).get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lora_r": "8", "target_modules": "['q_proj', 'v_proj']"}
    assert run.data.metrics == {"loss": 2.5}


def test_two_fine_tunes_at_once_each_get_their_own_run(tmp_path: Path) -> None:
    """Two processes on a fresh store: the schema and the experiment are created once."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", LOG_FROM_A_PROCESS, str(tmp_path), name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("first", "second-one")
    ]
    outputs = [process.communicate(timeout=120) for process in processes]

    assert all(process.returncode == 0 for process in processes), outputs
    run_ids = [stdout.strip().splitlines()[-1] for stdout, _ in outputs]
    client = client_for(default_tracking_uri(tmp_path))
    experiment = client.get_experiment_by_name("shared")
    runs = {run.info.run_id: run for run in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == sorted(run_ids)
    for run_id, name in zip(run_ids, ("first", "second-one"), strict=True):
        history = client.get_metric_history(run_id, "loss")
        assert runs[run_id].data.params == {"name": name}
        assert sorted(m.value for m in history) == [len(name) + 1, len(name) + 2, len(name) + 3]


def test_an_interrupted_fine_tune_is_killed_and_reopened_on_resume(tmp_path: Path) -> None:
    with (
        pytest.raises(TaskCancelledError),
        MlflowTracker.open(home=tmp_path, tracking_uri=None, experiment="e", run_name="r") as first,
    ):
        first.log_params({"steps": 4})
        raise TaskCancelledError("interrupted after step 2")
    client = client_for(first.tracking_uri)
    assert client.get_run(first.run_id).info.status == "KILLED"

    with MlflowTracker.open(
        home=tmp_path, tracking_uri=None, experiment="e", run_name="r", resume_run_id=first.run_id
    ) as again:
        again.log_params({"steps": 4, "new": 1})  # kept parameters are not logged twice

    assert again.run_id == first.run_id
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"steps": "4", "new": "1"}


def test_an_explicit_tracking_uri_is_used(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"

    with MlflowTracker.open(
        home=tmp_path / "home", tracking_uri=uri, experiment="e", run_name="r"
    ) as tracker:
        tracker.log_metrics({"loss": 1.0}, step=1)

    assert (tmp_path / "elsewhere.db").is_file()
    assert not (tmp_path / "home" / "mlflow" / "mlflow.db").exists()
    assert client_for(uri).get_run(tracker.run_id).data.metrics == {"loss": 1.0}
