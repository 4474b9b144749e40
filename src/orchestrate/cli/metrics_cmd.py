"""`orchestrate metrics`: the Prometheus endpoint for every build on this machine."""

from __future__ import annotations

import threading

import typer

from orchestrate.cli.common import console, err_console, reports_errors

metrics_app = typer.Typer(
    help="Prometheus metrics of every build and fine-tune on this machine.",
    no_args_is_help=True,
)

DEFAULT_PORT = 9464  # the port OpenTelemetry and Prometheus exporters conventionally use


@metrics_app.command("serve")
@reports_errors
def serve(
    host: str | None = typer.Option(
        None, "--host", help="Address to listen on (default ORCHESTRATE_METRICS_HOST, 127.0.0.1)."
    ),
    port: int = typer.Option(DEFAULT_PORT, "--port", min=0, max=65535, help="Port to listen on."),
) -> None:
    """Serve /metrics for Prometheus: the sum over every build, running or ended.

    Runs until Ctrl-C. Example: orchestrate metrics serve --port 9464
    """
    from orchestrate.errors import UserInputError
    from orchestrate.observe.exposition import MetricsServer, host_registry
    from orchestrate.settings import load_settings

    settings = load_settings()
    address = host or settings.metrics_host
    server = MetricsServer(host_registry(settings), address, port)
    try:
        server.__enter__()
    except OSError as exc:
        raise UserInputError(
            f"cannot listen on {address}:{port} ({exc.strerror}); choose another --port"
        ) from None
    err_console.print(f"serving {server.url} (Ctrl-C to stop)", highlight=False)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.__exit__(None, None, None)


@metrics_app.command("show")
@reports_errors
def show() -> None:
    """Print what `metrics serve` would answer now, in Prometheus' text format.

    Example: orchestrate metrics show | grep orchestrate_tokens_total
    """
    from prometheus_client import generate_latest

    from orchestrate.observe.exposition import host_registry
    from orchestrate.settings import load_settings

    console.out(generate_latest(host_registry(load_settings())).decode(), end="")
