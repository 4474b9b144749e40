"""The dashboard and the alerts against a real Prometheus scraping `orchestrate metrics serve`.

Builds of every kind (a rejected crew, retries, a failure, a secret, a paid remote model
behind a rate limit, a cached re-run) fill the host's metric files, one more build is
left running, and a Prometheus started here scrapes the exporter every second. Then
every PromQL expression of the Grafana dashboard and of ``alerts.yml`` (without its
threshold) must return at least one series: a panel or an alert that names a metric we
never export, or labels we never set, would show nothing forever.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import EXAMPLE_SCRIPT, EXAMPLE_SPEC, REPO, require_tool, wait_for
from orchestrate.cli.app import app
from orchestrate.testing.llm_server import FakeLLMServer
from test_cli_observability import answers, fetch, free_port

DASHBOARD = REPO / "monitoring" / "grafana" / "dashboards" / "orchestrate.json"
ALERTS = REPO / "monitoring" / "alerts.yml"
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s"}
THRESHOLD = re.compile(r"\s*(?:==|!=|>=|<=|>|<)\s*[0-9.]+\s*$")
PAID_MODEL = "openai:gpt-4o-mini"
SECRET = "AKIA" + "IOSFODNN7EXAMPLE"
runner = CliRunner()


def dashboard_expressions() -> list[str]:
    def panels(items: list[dict]) -> Iterator[dict]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    expressions = []
    for panel in panels(json.loads(DASHBOARD.read_text())["panels"]):
        for target in panel.get("targets", []):
            expression = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expression = expression.replace(variable, value)
            expressions.append(expression)
    return expressions


def alert_expressions() -> list[str]:
    rules = [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]
    return [THRESHOLD.sub("", rule["expr"]) for rule in rules if "alert" in rule]


def metric_names(expressions: list[str]) -> set[str]:
    names = set()
    for expression in expressions:
        for name in re.findall(r"orchestrate_[a-z_]+", expression):
            names.add(re.sub(r"_(bucket|count|sum)$", "", name) if "_seconds_" in name else name)
    return names


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expression: str) -> list[dict]:
        reply = json.loads(fetch(f"{self.url}/api/v1/query?query={urllib.parse.quote(expression)}"))
        assert reply["status"] == "success", (expression, reply)
        return list(reply["data"]["result"])


@pytest.fixture
def remote_model(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLMServer]:
    with FakeLLMServer(retry_after="0") as server:
        monkeypatch.setenv("ORCHESTRATE_OPENAI_BASE_URL", server.openai_base_url)
        monkeypatch.setenv("ORCHESTRATE_OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("ORCHESTRATE_RETRY_BASE_SECONDS", "0")
        monkeypatch.setenv("ORCHESTRATE_LLM_RETRY_BASE_SECONDS", "0")
        yield server


HANGING_TEST = (
    "FILE: tests/test_hang.py\n```python\nimport time\n\n\n"
    "def test_hang():\n    time.sleep(60)\n```\n"
)


def crew_with_a_paid_docs_agent(folder: Path) -> Path:
    crew = yaml.safe_load((REPO / "config" / "crew.yaml").read_text())
    crew["agents"]["docs"]["model"] = PAID_MODEL
    crew["checks"]["limits"]["wall_seconds"] = 2  # a hanging generated test ends soon
    path = folder / "crew.yaml"
    path.write_text(yaml.safe_dump(crew))
    return path


def run_every_kind_of_build(folder: Path, server: FakeLLMServer, write_script) -> Path:
    """Builds that between them touch every metric; returns the crew they used."""
    crew = crew_with_a_paid_docs_agent(folder)
    cyclic = yaml.safe_load(crew.read_text())
    cyclic["tasks"]["design"]["context"] = ["review"]
    (folder / "cyclic.yaml").write_text(yaml.safe_dump(cyclic))
    troubled = write_script(
        "troubled.yaml",
        architect={"answer": f"FILE: config.py\n```python\nKEY = '{SECRET}'\n```\n"},
        # Its tests hang: the sandbox's wall clock stops them, and a repair round follows.
        qa={"answer": HANGING_TEST, "fail_first": 1, "failure": "rate_limit"},
        devops={"error": "simulated outage"},
    )
    builds = [
        (["--crew", str(folder / "cyclic.yaml")], 2),
        (["--crew", str(crew), "--model", f"scripted:{EXAMPLE_SCRIPT}"], 0),
        (["--crew", str(crew), "--model", f"scripted:{EXAMPLE_SCRIPT}"], 0),  # cache hits
        (["--crew", str(crew), "--model", f"scripted:{troubled}", "--no-cache"], 1),
    ]
    server.inject("rate_limit", times=1)  # the first paid call is retried
    for args, expected in builds:
        result = runner.invoke(app, ["build", str(EXAMPLE_SPEC), "--json", *args])
        assert result.exit_code == expected, result.stderr
    return crew


@pytest.fixture
def long_build(isolated: Path, remote_model: FakeLLMServer, write_script) -> Iterator[None]:
    """Every kind of finished build, then one left running while Prometheus looks."""
    crew = run_every_kind_of_build(isolated, remote_model, write_script)
    slow = write_script("slow.yaml", architect={"answer": "design", "latency_seconds": 300})
    command = [sys.executable, "-m", "orchestrate", "build", str(EXAMPLE_SPEC), "--json"]
    process = subprocess.Popen(
        [*command, "--crew", str(crew), "--model", f"scripted:{slow}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)


@pytest.fixture
def exporter(isolated: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrate", "metrics", "serve", "--port", str(port)],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/metrics"), "metrics serve")
        yield f"127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


@pytest.fixture
def prometheus(tmp_path: Path, exporter: str) -> Iterator[Prometheus]:
    binary = require_tool("prometheus", "prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "orchestrate", "static_configs": [{"targets": [exporter]}]}
        ],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{url}/-/ready"), "Prometheus to start")
        yield Prometheus(url)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_every_dashboard_and_alert_expression_returns_a_series(
    long_build: None, prometheus: Prometheus
) -> None:
    def scraped_enough() -> bool:  # the live build seen, and three scrapes for rate()
        running = prometheus.query('orchestrate_agents_running{agent="architect"} == 1')
        samples = prometheus.query("count_over_time(orchestrate_runs_total[1m])")
        return bool(running) and all(float(s["value"][1]) >= 3 for s in samples) and bool(samples)

    wait_for(scraped_enough, "Prometheus to scrape the exporter during the live build")

    expressions = dashboard_expressions() + alert_expressions()
    empty = [expression for expression in expressions if not prometheus.query(expression)]
    assert not empty, "expressions that return no series:\n" + "\n".join(empty)
    missing = [
        name
        for name in sorted(metric_names(expressions))
        if not prometheus.query(f'{{__name__=~"{name}(_bucket|_count|_sum)?"}}')
    ]
    assert not missing, f"metrics never exported: {missing}"
    assert len(expressions) > 30
    cost = prometheus.query(f'sum(orchestrate_cost_total{{model="{PAID_MODEL}"}})')
    assert float(cost[0]["value"][1]) > 0
