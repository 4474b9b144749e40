"""Model prices, read from a YAML file: per million input and output tokens, per model."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrate.bundled import bundled_path
from orchestrate.errors import SettingsError, describe_validation_error

MICROS = 1_000_000  # money is counted in millionths of the currency unit, as integers


class ModelPrice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0, description="Price per million prompt tokens.")
    output: float = Field(ge=0, description="Price per million completion tokens.")

    @property
    def is_free(self) -> bool:
        return self.input == 0 and self.output == 0

    def cost_micros(self, prompt_tokens: int, completion_tokens: int) -> int:
        """The price of a call, in millionths of the currency, rounded up."""
        # Per million tokens and per millionth of a unit: the two millions cancel out.
        exact = self.input * prompt_tokens + self.output * completion_tokens
        return math.ceil(exact)


class PriceList(BaseModel):
    """The pricing file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    currency: str = Field(pattern=r"^[A-Z]{3}$")
    models: dict[str, ModelPrice]

    def price_of(self, model: str) -> ModelPrice:
        """The price of the longest key matching ``model``; SettingsError when none does."""
        if model in self.models:
            return self.models[model]
        matches = [key for key in self.models if fnmatch.fnmatchcase(model, key)]
        if not matches:
            raise SettingsError(
                f"no price for model '{model}' in the pricing file; add it (or a pattern "
                f"such as '{model.partition(':')[0]}:*') so its calls can be budgeted"
            )
        return self.models[max(matches, key=len)]


@dataclass(frozen=True)
class Pricing:
    """A price list checked against the budget's currency."""

    prices: PriceList
    source: Path

    def price_of(self, model: str) -> ModelPrice:
        return self.prices.price_of(model)


def default_pricing_file() -> Path:
    return bundled_path("config/pricing.yaml")


def load_pricing(path: Path | None, *, currency: str) -> Pricing:
    """Read and validate the pricing file; its currency must be the budget's."""
    source = path or default_pricing_file()
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
        prices = PriceList.model_validate(data)
    except FileNotFoundError:
        raise SettingsError(
            f"pricing file not found: {source} (ORCHESTRATE_PRICING_FILE)"
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SettingsError(f"cannot read pricing file {source}: {exc}") from exc
    except ValidationError as exc:
        raise SettingsError(f"pricing file {source}: {describe_validation_error(exc)}") from exc
    if prices.currency != currency:
        raise SettingsError(
            f"pricing file {source} is in {prices.currency} but the budget is in {currency}; "
            f"set ORCHESTRATE_CURRENCY={prices.currency} or convert the prices"
        )
    return Pricing(prices, source)
