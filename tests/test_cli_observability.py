"""Metrics and traces of real builds: served while running, pushed at the end, traced."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from typer.testing import CliRunner

from conftest import BUNDLED_RUN_TASKS, EXAMPLE_SCRIPT, EXAMPLE_SPEC, require_tool, wait_for
from orchestrate.cli.app import app
from orchestrate.errors import SettingsError
from orchestrate.observe import tracing

runner = CliRunner()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def answers(url: str) -> bool:
    try:
        fetch(url)
    except OSError:
        return False
    return True


def build(*args: str) -> tuple[int, dict[str, object], str]:
    result = runner.invoke(app, ["build", str(EXAMPLE_SPEC), "--json", *args])
    payload = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.exit_code, payload, result.stderr


# Traces -----------------------------------------------------------------------------


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    monkeypatch.setattr(tracing, "exporter_from_environment", lambda: exporter)
    return exporter


def test_a_run_is_one_span_tree_with_genai_attributes(
    isolated: Path, write_script, spans: InMemorySpanExporter
) -> None:
    script = write_script(devops={"error": "simulated outage"})

    code, _, _ = build("--model", f"scripted:{script}", "--no-cache")

    assert code == 1
    finished = spans.get_finished_spans()
    runs = [s for s in finished if s.attributes["gen_ai.operation.name"] == "invoke_workflow"]
    agents = [s for s in finished if s.attributes["gen_ai.operation.name"] == "invoke_agent"]
    chats = [s for s in finished if s.attributes["gen_ai.operation.name"] == "chat"]
    assert len(runs) == 1 and runs[0].parent is None
    root = runs[0]
    assert root.name == "invoke_workflow orchestrate build"
    assert root.attributes["orchestrate.run.status"] == "failed"
    assert root.status.status_code.name == "ERROR"
    # review is skipped (its input deploy failed), so it never ran and has no span
    assert {s.attributes["orchestrate.task"] for s in agents} == BUNDLED_RUN_TASKS - {"review"}
    assert all(s.parent.span_id == root.context.span_id for s in agents)
    deploy = next(s for s in agents if s.attributes["orchestrate.task"] == "deploy")
    assert deploy.name == "invoke_agent devops"
    assert deploy.status.status_code.name == "ERROR"
    assert deploy.attributes["gen_ai.agent.name"] == "devops"
    by_id = {s.context.span_id: s for s in agents}
    for chat in chats:
        owner = by_id[chat.parent.span_id]
        assert chat.attributes["orchestrate.task"] == owner.attributes["orchestrate.task"]
        assert chat.attributes["gen_ai.provider.name"] == "scripted"
        assert chat.attributes["gen_ai.request.model"] == script.name
        assert chat.attributes["gen_ai.agent.name"] == owner.attributes["gen_ai.agent.name"]
        assert chat.start_time <= chat.end_time
    design = next(s for s in agents if s.attributes["orchestrate.task"] == "design")
    design_chats = [c for c in chats if c.parent.span_id == design.context.span_id]
    assert len(design_chats) == 1
    assert design_chats[0].attributes["gen_ai.usage.input_tokens"] > 0
    assert design_chats[0].attributes["gen_ai.usage.output_tokens"] > 0
    assert (
        design.attributes["gen_ai.usage.output_tokens"]
        == (design_chats[0].attributes["gen_ai.usage.output_tokens"])
    )


def test_tracing_is_off_unless_the_otel_variables_ask(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert tracing.exporter_from_environment() is None

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    assert isinstance(tracing.exporter_from_environment(), ConsoleSpanExporter)
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.exporter_from_environment() is None
    monkeypatch.delenv("OTEL_SDK_DISABLED")

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin-nonexistent")
    with pytest.raises(SettingsError, match="not installed"):
        tracing.exporter_from_environment()

    monkeypatch.delenv("OTEL_TRACES_EXPORTER")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    exporter = tracing.exporter_from_environment()
    assert type(exporter).__module__.startswith("opentelemetry.exporter.otlp.proto.http")


# Exposure ---------------------------------------------------------------------------


def test_a_running_build_serves_its_metrics(isolated: Path) -> None:
    script = yaml.safe_load(EXAMPLE_SCRIPT.read_text())
    script["agents"]["architect"]["latency_seconds"] = 30  # long enough to scrape; killed below
    path = isolated / "slow.yaml"
    path.write_text(yaml.safe_dump(script))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrate",
            "build",
            str(EXAMPLE_SPEC),
            "--model",
            f"scripted:{path}",
            "--metrics-port",
            "0",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stderr is not None
        url = ""
        for line in process.stderr:
            if line.startswith("metrics: "):
                url = line.split(" ", 1)[1].strip()
                break
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        wait_for(
            lambda: 'orchestrate_agents_running{agent="architect"} 1.0' in fetch(url),
            "the architect to be running",
        )
        text = fetch(url)
        assert "orchestrate_worker_limit 4.0" in text
        assert 'orchestrate_budget_remaining{currency="USD"}' in text
        assert 'orchestrate_gpu_capacity_bytes{device="cpu"}' in text
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
    assert not answers(url)  # the endpoint lasts as long as the run


def test_a_busy_metrics_port_is_a_one_line_error(isolated: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, error = build("--model", f"scripted:{EXAMPLE_SCRIPT}", "--metrics-port", str(port))
    assert code == 2
    assert f"--metrics-port {port}" in error and "Traceback" not in error
    assert not Path("runs").exists() or not any(Path("runs").iterdir())


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    binary = require_tool("prometheus-pushgateway", "prometheus-pushgateway")
    port = free_port()
    process = subprocess.Popen(
        # Debian's default persists into /var/lib: keep this one's pushes in memory only
        [binary, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{url}/-/ready"), "the pushgateway to start")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_build_pushes_its_metrics_to_a_real_pushgateway(isolated: Path, pushgateway: str):
    code, _, _ = build("--model", f"scripted:{EXAMPLE_SCRIPT}", "--pushgateway", pushgateway)

    assert code == 0
    pushed = fetch(f"{pushgateway}/metrics")
    lines = [line for line in pushed.splitlines() if line.startswith("orchestrate_runs_total")]
    assert len(lines) == 1
    assert 'job="orchestrate_build"' in lines[0] and 'status="succeeded"' in lines[0]
    assert lines[0].endswith(" 1")
    assert 'orchestrate_tokens_total{agent="architect",direction="output"' in pushed
    assert "orchestrate_task_duration_seconds_bucket{" in pushed
    assert "orchestrate_agents_running{" not in pushed  # gauges would outlive the run
    assert "orchestrate_budget_spent{" not in pushed


def test_an_unreachable_pushgateway_costs_a_warning_not_the_run(isolated: Path) -> None:
    gateway = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(
        app,
        [
            "build",
            str(EXAMPLE_SPEC),
            "--model",
            f"scripted:{EXAMPLE_SCRIPT}",
            "--pushgateway",
            gateway,
        ],
    )
    assert result.exit_code == 0
    assert f"could not push metrics to {gateway}" in result.stderr


def test_metrics_serve_shows_every_build_and_counts_rejected_crews(isolated: Path) -> None:
    crew = yaml.safe_load((Path(__file__).parents[1] / "config" / "crew.yaml").read_text())
    crew["tasks"]["design"]["context"] = ["review"]
    cyclic = isolated / "cyclic.yaml"
    cyclic.write_text(yaml.safe_dump(crew))
    assert build("--crew", str(cyclic))[0] == 2
    assert build("--model", f"scripted:{EXAMPLE_SCRIPT}")[0] == 0
    assert build("--model", f"scripted:{EXAMPLE_SCRIPT}")[0] == 0  # from the cache

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "orchestrate", "metrics", "serve", "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for(lambda: answers(url), "metrics serve to listen")
        text = fetch(url)
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0
    assert 'orchestrate_runs_total{status="succeeded"} 2.0' in text
    assert 'orchestrate_crews_rejected_total{reason="cycle"} 1.0' in text
    assert 'orchestrate_cache_hits_total{model="scripted:todo.yaml"} 6.0' in text
    running = [line for line in text.splitlines() if line.startswith("orchestrate_agents_running{")]
    assert all(line.endswith(" 0.0") for line in running)  # nothing runs now


def test_metrics_show_prints_the_host_view(isolated: Path) -> None:
    assert build("--model", f"scripted:{EXAMPLE_SCRIPT}")[0] == 0
    result = runner.invoke(app, ["metrics", "show"])
    assert result.exit_code == 0
    assert 'orchestrate_runs_total{status="succeeded"} 1.0' in result.stdout
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").endswith("metrics")


def test_every_build_leaves_its_report_even_a_failed_one(isolated: Path, write_script) -> None:
    script = write_script(devops={"error": "simulated outage"})

    code, payload, _ = build("--model", f"scripted:{script}")

    assert code == 1
    report = Path(str(payload["report"]))
    assert report == Path(str(payload["run_dir"])) / "report.html"
    page = report.read_text()
    assert "simulated outage" in page and "<svg" in page
