"""MLflow tracking of a fine-tune, with no server by default.

The default store is SQLite, ``$ORCHESTRATE_HOME/mlflow/mlflow.db``, with artifacts in
``$ORCHESTRATE_HOME/mlflow/artifacts``; ``MLFLOW_TRACKING_URI`` (or
``ORCHESTRATE_MLFLOW_TRACKING_URI``) points elsewhere, a server included. Each fine-tune
is its own MLflow run, addressed by id through ``MlflowClient`` rather than the fluent
API's process-wide "active run", so two fine-tunes never write into each other's run;
a resumed fine-tune reopens the run its checkpoint names.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import TracebackType
from typing import Any

from filelock import FileLock

from orchestrate.errors import OrchestrateError, SettingsError

logger = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 500  # MLflow refuses longer parameter values


def default_tracking_uri(home: Path) -> str:
    return f"sqlite:///{(home / 'mlflow' / 'mlflow.db').resolve()}"


class MlflowTracker:
    """One MLflow run: parameters, metrics by step, artifacts; closed on leaving ``with``."""

    def __init__(self, client: Any, run_id: str, tracking_uri: str) -> None:
        self._client = client
        self.run_id = run_id
        self.tracking_uri = tracking_uri

    @classmethod
    def open(
        cls,
        *,
        home: Path,
        tracking_uri: str | None,
        experiment: str,
        run_name: str,
        resume_run_id: str | None = None,
    ) -> MlflowTracker:
        """Start a run in ``experiment`` (created when missing), or reopen ``resume_run_id``."""
        _quiet_mlflow()
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        uri = tracking_uri or default_tracking_uri(home)
        folder = home / "mlflow"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # Creating the schema or the experiment is not safe from two processes at once.
            with FileLock(str(folder / ".setup.lock")):
                client = MlflowClient(tracking_uri=uri)
                experiment_id = _experiment_id(client, experiment, None if tracking_uri else folder)
            if resume_run_id is not None and _run_exists(client, resume_run_id):
                client.update_run(resume_run_id, status="RUNNING")
                return cls(client, resume_run_id, uri)
            run = client.create_run(experiment_id, run_name=run_name)
        except MlflowException as exc:
            raise SettingsError(f"MLflow store {uri} cannot be used: {exc.message}") from exc
        return cls(client, run.info.run_id, uri)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self._client.get_run(self.run_id).data.params
        fresh = [
            Param(key, str(value)[:MAX_PARAM_LENGTH])
            for key, value in params.items()
            if key not in existing  # a resumed run keeps its parameters; MLflow refuses changes
        ]
        if fresh:
            self._client.log_batch(self.run_id, params=fresh)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        self._client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_artifact(self, path: Path, artifact_path: str) -> None:
        self._client.log_artifact(self.run_id, str(path), artifact_path)

    def __enter__(self) -> MlflowTracker:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            status = "FINISHED"
        elif issubclass(kind, KeyboardInterrupt) or getattr(error, "exit_code", 0) == 130:
            status = "KILLED"
        else:
            status = "FAILED"
        try:
            self._client.set_terminated(self.run_id, status=status)
        except Exception as exc:  # never hide the error that ended the run
            logger.warning("could not close MLflow run %s: %s", self.run_id, exc)


def _experiment_id(client: Any, name: str, artifacts_home: Path | None) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise OrchestrateError(
                f"MLflow experiment '{name}' is deleted; restore it or use --experiment OTHER"
            )
        return str(found.experiment_id)
    location = None
    if artifacts_home is not None:
        location = (artifacts_home / "artifacts").resolve().as_uri()
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except MlflowException:  # created by another process on another store lock
        again = client.get_experiment_by_name(name)
        if again is None:
            raise
        return str(again.experiment_id)


def _run_exists(client: Any, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException:
        logger.warning("MLflow run %s of the checkpoint is gone; starting a new run", run_id)
        return False
    return True


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def _quiet_mlflow() -> None:
    """No database-migration chatter or telemetry; the terminal shows our progress bar."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    for name in ("alembic", "mlflow", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
