"""Settings: flags > environment (ORCHESTRATE_*) > .env > orchestrate.toml > defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from platformdirs import user_state_path
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from orchestrate.errors import SettingsError, describe_validation_error
from orchestrate.scheduler.policy import RetryPolicy, TaskPolicy

DEFAULT_MODEL = "embedded:smollm2-135m"
TOML_FILE = "orchestrate.toml"


class Settings(BaseSettings):
    """Everything a user can configure, with its default."""

    model_config = SettingsConfigDict(
        env_prefix="ORCHESTRATE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        toml_file=TOML_FILE,
        validate_default=True,
        populate_by_name=True,
    )

    home: Path = Field(
        default_factory=lambda: user_state_path("orchestrate"),
        description="Machine-wide state: converted models, write locks, budget ledger, leases.",
    )
    runs_dir: Path = Field(Path("runs"), description="Where each run gets its folder.")
    model: str = Field(DEFAULT_MODEL, description="Model for every agent: BACKEND:NAME.")
    workers: int = Field(4, ge=1, le=64, description="Tasks that may run at the same time.")
    executor: Literal["local", "ray"] = Field(
        "local", description="Where tasks run: local threads, or Ray tasks on a cluster."
    )
    ray_address: str | None = Field(
        None, description="The Ray cluster to join (host:port or ray://); default: start one."
    )
    crew_file: Path | None = Field(None, description="Crew YAML; default: the bundled crew.")
    embedded_model: Path | None = Field(
        None, description="A GGUF file or Hugging Face model folder for the embedded backend."
    )
    embedded_adapter: Path | None = Field(
        None, description="A LoRA adapter folder (orchestrate finetune) for embedded models."
    )
    embedded_engine: Literal["auto", "transformers", "llama"] = Field(
        "auto", description="auto: llama.cpp for GGUF files when llama-cpp-python is installed."
    )
    embedded_precision: Literal["auto", "fp32", "fp16", "bf16", "int8"] = Field(
        "auto", description="Embedded weights; auto: fp16 on an x86 CPU, bf16 on a GPU."
    )
    embedded_batch: int = Field(
        4, ge=1, le=32, description="Most embedded requests decoded together (1: one at a time)."
    )
    max_tokens: int = Field(512, ge=1, le=32768, description="Most tokens one answer may have.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 means greedy decoding.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    retry_max_attempts: int = Field(
        3, ge=1, le=20, description="Tries per task for transient failures (1: no retry)."
    )
    retry_base_seconds: float = Field(
        2.0, ge=0, le=600, description="First backoff between attempts; doubles each time."
    )
    retry_cap_seconds: float = Field(60.0, ge=0, le=3600, description="Longest backoff.")
    task_timeout_seconds: float | None = Field(
        1800.0, gt=0, le=86400, description="Wall-clock limit per task, all attempts included."
    )
    cache: bool = Field(True, description="Reuse earlier answers to identical model calls.")
    cache_sampled: bool = Field(
        False, description="Also cache calls made with temperature > 0 (off: they vary)."
    )
    cache_max_mb: float = Field(
        256.0, gt=0, le=1_000_000, description="Size of the response cache before eviction."
    )

    # Model backends: where they are, and how hard to try each one.
    fallbacks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Models tried in order when the main one fails (comma-separated).",
    )
    ollama_host: str = Field(
        "http://127.0.0.1:11434",
        validation_alias=AliasChoices("ORCHESTRATE_OLLAMA_HOST", "OLLAMA_HOST", "ollama_host"),
        description="The Ollama server (OLLAMA_HOST works too).",
    )
    openai_base_url: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "ORCHESTRATE_OPENAI_BASE_URL", "OPENAI_BASE_URL", "openai_base_url"
        ),
        description="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 for vLLM.",
    )
    openai_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices(
            "ORCHESTRATE_OPENAI_API_KEY", "OPENAI_API_KEY", "openai_api_key"
        ),
        description="Key for the OpenAI-compatible endpoint (OPENAI_API_KEY works too).",
    )
    llm_timeout_seconds: float = Field(
        120.0, gt=0, le=3600, description="Longest one remote model call may take."
    )
    llm_stream: bool = Field(True, description="Stream remote answers (tokens per second live).")
    llm_retry_max_attempts: int = Field(
        3, ge=1, le=20, description="Tries per model call for 429, 5xx, timeouts, resets."
    )
    llm_retry_base_seconds: float = Field(
        0.5, ge=0, le=600, description="First backoff between call tries; doubles each time."
    )
    llm_retry_cap_seconds: float = Field(
        10.0, ge=0, le=3600, description="Longest backoff between call tries."
    )
    breaker_failure_threshold: int = Field(
        5, ge=1, le=1000, description="Failures in a row that open a backend's circuit."
    )
    breaker_reset_seconds: float = Field(
        30.0, gt=0, le=3600, description="How long an open circuit waits before a trial call."
    )
    tokenizer_file: Path | None = Field(
        None, description="tokenizer.json to count tokens when a server reports no usage."
    )
    context_window: int = Field(
        8192, ge=256, le=10_000_000, description="Context window of remote models, in tokens."
    )

    # Locked, atomic, confined writes.
    secret_mode: Literal["redact", "refuse"] = Field(
        "redact", description="What to do with a secret found in a generated file."
    )

    # Budget-aware worker limiter.
    daily_budget: float = Field(
        5.0, ge=0, description="Most money paid models may cost per UTC day, all processes."
    )
    currency: str = Field(
        "USD", pattern=r"^[A-Z]{3}$", description="Currency of the budget and the prices."
    )
    pricing_file: Path | None = Field(
        None, description="Prices per model (YAML); default: the bundled config/pricing.yaml."
    )
    fallback_model: str | None = Field(
        None, description="A free local model to answer a call the budget cannot pay for."
    )
    max_workers: int = Field(
        8, ge=1, le=64, description="Worker limit while more than the first threshold is left."
    )
    budget_thresholds: tuple[float, float, float] = Field(
        (0.5, 0.2, 0.1),
        description="Remaining-budget shares below which the limit drops to 4, 2 and 1.",
    )
    budget_hysteresis: float = Field(
        0.02, ge=0, le=0.5, description="Extra share needed before the limit rises again."
    )

    # GPU lease manager.
    gpu_safety_margin_mib: int = Field(
        512, ge=0, description="MiB of each device's memory never leased out."
    )
    cpu_capacity_mib: int | None = Field(
        None, ge=1, description="MiB leasable on the CPU device; default: a share of RAM."
    )
    cpu_ram_share: float = Field(
        0.5, gt=0, le=1, description="Share of RAM leasable on the CPU device by default."
    )
    lease_timeout: float = Field(
        600.0, gt=0, description="Seconds to wait for device memory before giving up."
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Serve a build's metrics on this port (0: any free)."
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address `orchestrate metrics serve` listens on."
    )
    pushgateway: str | None = Field(
        None, description="Pushgateway URL that receives a build's metrics when it ends."
    )

    # Long-term memory.
    memory: bool = Field(
        True, description="Recall earlier runs' answers into each task's context; remember these."
    )
    memory_tokens: int = Field(
        1024, ge=0, le=1_000_000, description="Most tokens of recalled memories per task."
    )
    memory_top_k: int = Field(
        3, ge=1, le=50, description="Most memories recalled into one task's context."
    )

    # Fine-tuning.
    mlflow_tracking_uri: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "ORCHESTRATE_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI", "mlflow_tracking_uri"
        ),
        description="MLflow store for fine-tunes; default: SQLite in the state directory.",
    )

    @field_validator("budget_thresholds")
    @classmethod
    def _descending_shares(cls, shares: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(0 < share < 1 for share in shares) or list(shares) != sorted(shares)[::-1]:
            raise ValueError("give three shares between 0 and 1, largest first")
        return shares

    @field_validator("fallbacks", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator(
        "home",
        "runs_dir",
        "crew_file",
        "embedded_model",
        "embedded_adapter",
        "pricing_file",
        "tokenizer_file",
    )
    @classmethod
    def _expand_home(cls, path: Path | None) -> Path | None:
        return path.expanduser() if path is not None else None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_settings = TomlConfigSettingsSource(settings_cls)
        return init_settings, env_settings, dotenv_settings, toml_settings

    @property
    def models_dir(self) -> Path:
        """Cache of converted model weights, shared by every run on the machine."""
        return self.home / "models"

    @property
    def cache_path(self) -> Path:
        """The response cache, shared by every run on the machine."""
        return self.home / "cache" / "responses.sqlite3"

    @property
    def history_path(self) -> Path:
        """How long each agent's tasks took in earlier runs, for scheduling estimates."""
        return self.home / "history.sqlite3"

    def task_policy(self) -> TaskPolicy:
        """The retry and timeout policy for tasks whose crew file sets none."""
        retry = RetryPolicy(
            self.retry_max_attempts, self.retry_base_seconds, self.retry_cap_seconds
        )
        return TaskPolicy(retry, self.task_timeout_seconds)

    def model_chain(self, model: str | None = None) -> list[str]:
        """``model`` (default: the main model), then each fallback not already in it."""
        chain = [model or self.model]
        chain += [name for name in self.fallbacks if name not in chain]
        return chain

    def retry_policy_per_call(self) -> RetryPolicy:
        """How often one model call is tried before its model is given up on."""
        return RetryPolicy(
            self.llm_retry_max_attempts, self.llm_retry_base_seconds, self.llm_retry_cap_seconds
        )

    @property
    def memory_dir(self) -> Path:
        """Long-term memory: earlier tasks' answers, shared by every run on the machine."""
        return self.home / "memory"

    @property
    def locks_dir(self) -> Path:
        """Lock files of the workspace writer, shared by every process on the machine."""
        return self.home / "locks"


def load_settings(**overrides: Any) -> Settings:
    """Build the settings; flags given as keyword arguments win over every other source.

    A value of ``None`` means "flag not given" and is dropped so lower sources apply.
    """
    flags = {name: value for name, value in overrides.items() if value is not None}
    try:
        return Settings(**flags)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc, env_prefix="ORCHESTRATE_")) from exc
    except ValueError as exc:  # a malformed orchestrate.toml or .env
        raise SettingsError(f"cannot read settings: {exc}") from exc
