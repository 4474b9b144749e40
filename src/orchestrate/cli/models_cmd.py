"""`orchestrate models`: every model this machine can use now, and what it costs."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from orchestrate.cli.common import console, reports_errors

if TYPE_CHECKING:
    from orchestrate.llm.probe import Probe
    from orchestrate.safety.pricing import Pricing
    from orchestrate.settings import Settings


@dataclass(frozen=True)
class ModelRow:
    model: str  # BACKEND:NAME, as --model takes it
    where: str
    price: str  # per million input / output tokens, or "free", or "no price"
    note: str = ""


@reports_errors
def models(
    json_output: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the models you can pass to --model: embedded, Ollama's, the OpenAI endpoint's.

    Example: orchestrate models
    """
    from orchestrate.settings import load_settings

    settings = load_settings()
    rows = available_models(settings)
    if json_output:
        console.print_json(json.dumps([asdict(row) for row in rows]))
        return
    table = Table(header_style="bold", box=None)
    for column in ("model", "where", "price / 1M tokens (in, out)", "note"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row.model, row.where, row.price, row.note)
    console.print(table)


def available_models(settings: Settings) -> list[ModelRow]:
    """The embedded model, each model a reachable server lists, and the test double."""
    from orchestrate.llm.models import connections_from
    from orchestrate.llm.probe import probe_ollama, probe_openai
    from orchestrate.safety.pricing import load_pricing

    pricing = load_pricing(settings.pricing_file, currency=settings.currency)
    connections = connections_from(settings)
    probes = [probe_ollama(connections)]
    if settings.openai_base_url is not None or settings.openai_api_key is not None:
        probes.append(probe_openai(connections))
    rows = [_embedded_row(settings)]
    for probe in probes:
        rows += _server_rows(probe, pricing)
    rows.append(ModelRow("scripted:FILE", "a YAML file of answers", "free", "a test double"))
    return rows


def _server_rows(probe: Probe, pricing: Pricing) -> list[ModelRow]:
    if not probe.reachable:
        return [ModelRow(f"{probe.backend}:…", probe.where, "", probe.error or "")]
    if not probe.listed:
        return [ModelRow(f"{probe.backend}:NAME", probe.where, "", "the server lists no models")]
    rows = []
    for name in probe.models:
        model = f"{probe.backend}:{name}"
        rows.append(ModelRow(model, probe.where, _price(pricing, model)))
    return rows


def _price(pricing: Pricing, model: str) -> str:
    from orchestrate.errors import SettingsError

    try:
        found = pricing.price_of(model)
    except SettingsError:
        return "no price: add it to the pricing file"
    if found.is_free:
        return "free"
    return f"{found.input:g}, {found.output:g} {pricing.prices.currency}"


def _embedded_row(settings: Settings) -> ModelRow:
    from orchestrate.errors import ModelNotFoundError
    from orchestrate.llm.embedded import BUNDLED_NAME, locate_embedded_model

    model = f"embedded:{BUNDLED_NAME}"
    try:
        source = locate_embedded_model(BUNDLED_NAME, override=settings.embedded_model)
    except ModelNotFoundError as exc:
        return ModelRow(model, "missing", "free", str(exc))
    return ModelRow(model, source.path.name, "free", "runs in the process; no server")
