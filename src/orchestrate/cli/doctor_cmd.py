"""`orchestrate doctor`: check that this machine can run a build."""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from orchestrate.cli.common import console, reports_errors

if TYPE_CHECKING:
    from orchestrate.llm.probe import Probe
    from orchestrate.settings import Settings

MIN_FREE_BYTES = 2 * 1024**3  # a converted model takes ~0.5 GB, runs are small
REQUIRED_PACKAGES = ("crewai", "torch", "transformers", "gguf", "accelerate")


@dataclass
class Check:
    name: str
    status: str  # "ok", "warn" or "fail"
    detail: str


@reports_errors
def doctor(
    load: bool = typer.Option(
        False, "--load", help="Also load (or call) the main model and time a short answer."
    ),
) -> None:
    """Check Python, packages, disk, the embedded model, the state directory and each
    configured remote backend (reachable, model present, latency).

    Example: orchestrate doctor --load
    """
    from orchestrate.settings import load_settings

    settings = load_settings()
    checks = [_python(), *_packages(), *_folders(settings.home, settings.runs_dir)]
    checks.append(_crew(settings.crew_file))
    checks.append(_sandbox())
    checks.append(_embedded_model(settings.embedded_model, settings.models_dir))
    checks += _remote_models(settings)
    if load:
        checks.append(_load_and_answer(settings))
    table = Table(header_style="bold", box=None)
    for column in ("check", "status", "detail"):
        table.add_column(column)
    styles = {"ok": "green", "warn": "yellow", "fail": "red"}
    for check in checks:
        table.add_row(check.name, f"[{styles[check.status]}]{check.status}[/]", check.detail)
    console.print(table)
    failed = [check.name for check in checks if check.status == "fail"]
    if failed:
        console.print(f"[red]{len(failed)} check(s) failed:[/] {', '.join(failed)}")
        raise typer.Exit(1)


def _python() -> Check:
    version = ".".join(str(part) for part in sys.version_info[:3])
    ok = sys.version_info >= (3, 11)
    return Check("python", "ok" if ok else "fail", f"{version} (need 3.11 or newer)")


def _sandbox() -> Check:
    """Whether the QA sandbox can cut generated code off the network and the host's files."""
    from orchestrate.qa.isolation import namespaces

    isolation = namespaces()
    if isolation.available:
        return Check("sandbox", "ok", "bubblewrap: no network, host read-only for checks")
    return Check(
        "sandbox",
        "warn",
        f"{isolation.problem}: generated tests would run with the network and the user's "
        f"file access (limits and a clean environment still apply); install bubblewrap",
    )


def _packages() -> list[Check]:
    checks = []
    for package in REQUIRED_PACKAGES:
        try:
            checks.append(Check(package, "ok", metadata.version(package)))
        except metadata.PackageNotFoundError:
            checks.append(Check(package, "fail", "not installed: run `make install`"))
    return checks


def _folders(home: Path, runs_dir: Path) -> list[Check]:
    return [_writable_folder("state directory", home), _writable_folder("runs folder", runs_dir)]


def _writable_folder(label: str, folder: Path) -> Check:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check(label, "fail", f"{folder} is not writable: {exc.strerror}")
    free = shutil.disk_usage(folder).free
    detail = f"{folder.resolve()} ({free / 1024**3:.1f} GiB free)"
    return Check(label, "ok" if free >= MIN_FREE_BYTES else "warn", detail)


def _crew(crew_file: Path | None) -> Check:
    from orchestrate.crew.config import load_crew
    from orchestrate.errors import CrewError

    try:
        crew, graph, source = load_crew(crew_file)
    except CrewError as exc:
        return Check("crew", "fail", str(exc))
    return Check("crew", "ok", f"{source}: {len(crew.agents)} agents, {len(graph.tasks)} tasks")


def _embedded_model(override: Path | None, models_dir: Path) -> Check:
    from orchestrate.errors import ModelNotFoundError
    from orchestrate.llm.embedded import BUNDLED_NAME, locate_embedded_model

    try:
        source = locate_embedded_model(BUNDLED_NAME, override=override)
    except ModelNotFoundError as exc:
        return Check("embedded model", "fail", str(exc))
    if not source.is_gguf:
        return Check("embedded model", "ok", f"{source.path} (model folder)")
    size = source.path.stat().st_size / 1024**2
    converted = (models_dir / source.cache_key() / "config.json").is_file()
    cache = "converted copy ready" if converted else "first build converts it (~20 s, once)"
    return Check("embedded model", "ok", f"{source.path.name} ({size:.0f} MiB); {cache}")


def _remote_models(settings: Settings) -> list[Check]:
    """One check per remote model the settings and crew name; Ollama's models listed."""
    from orchestrate.llm.models import REMOTE_BACKENDS, connections_from
    from orchestrate.llm.probe import probe_for, probe_ollama

    connections = connections_from(settings)
    probes: dict[str, Probe] = {}
    checks = []
    for model in _configured_models(settings):
        backend, name = model.split(":", 1)
        if backend not in REMOTE_BACKENDS:
            continue
        if backend not in probes:
            probes[backend] = probe_for(model, connections)
        checks.append(_model_check(model, name, probes[backend]))
    ollama = probes.get("ollama") or probe_ollama(connections)
    if ollama.reachable:
        listed = ", ".join(ollama.models) or "none: pull one with `ollama pull llama3.2`"
        checks.append(Check("ollama models", "ok", f"{ollama.where}: {listed}"))
    elif "ollama" not in probes:  # nothing needs it: say so without failing
        checks.append(Check("ollama", "warn", f"not running at {ollama.where} (optional)"))
    return checks


def _configured_models(settings: Settings) -> list[str]:
    from orchestrate.crew.config import load_crew
    from orchestrate.errors import OrchestrateError
    from orchestrate.llm.models import models_in_use

    try:
        agent_models = load_crew(settings.crew_file).config.models(settings.model)
        return models_in_use(settings, agent_models, settings.model)
    except OrchestrateError:  # the crew check reports a broken crew file
        return settings.model_chain()


def _model_check(model: str, name: str, probe: Probe) -> Check:
    if not probe.reachable:
        return Check(f"model {model}", "fail", probe.error or "unreachable")
    latency = f"{probe.where} answered in {probe.latency_ms:.0f} ms"
    if not probe.listed:
        return Check(f"model {model}", "ok", f"{latency}; it does not list its models")
    if probe.has(name):
        return Check(f"model {model}", "ok", f"{latency}; model present")
    hint = f"run `ollama pull {name}`" if probe.backend == "ollama" else "check the name"
    return Check(f"model {model}", "fail", f"{latency}; no model '{name}' there: {hint}")


def _load_and_answer(settings: Settings) -> Check:
    import threading
    import time

    from orchestrate.errors import OrchestrateError
    from orchestrate.llm.backend import CompletionRequest, create_backend
    from orchestrate.llm.models import connections_from

    model = settings.model
    try:
        backend = create_backend(
            model,
            models_dir=settings.models_dir,
            embedded_model=settings.embedded_model,
            connections=connections_from(settings),
        )
        started = time.perf_counter()
        backend.prepare()
        loaded = time.perf_counter() - started
        request = CompletionRequest(
            messages=[{"role": "user", "content": "Say hello in five words."}],
            agent="doctor",
            max_tokens=16,
            cancel=threading.Event(),
        )
        started = time.perf_counter()
        completion = backend.complete(request)
        seconds = time.perf_counter() - started
    except OrchestrateError as exc:
        return Check(f"model {model}", "fail", str(exc))
    speed = completion.completion_tokens / seconds if seconds > 0 else 0.0
    return Check(
        f"model {model}",
        "ok",
        f"loaded in {loaded:.1f} s; {completion.completion_tokens} tokens at {speed:.1f} tokens/s",
    )
