"""Continuous batching for the embedded model: concurrent requests share decoding steps.

The model's decoder (``decoder.py``) is driven from the process's compute thread
(``compute.py``), which every embedded model shares. A request joins the running batch
at the next step: its prompt is prefilled on its own, as a new row, and
from then on every step decodes one token for every row in a single forward pass. A
row leaves the batch when it meets an end token, its own ``max_new`` or stop string,
or its cancel event, without disturbing the others.

The decoding loop is our own rather than ``model.generate``: at batch 1 a 135M model
on a CPU spends much of each step in per-call overhead, and generate's logits
processors, stopping criteria and cache bookkeeping are a large part of it. Only what
we use is here: greedy or temperature sampling with HF's top-k default, and HF's
repetition penalty (the same formula over the prompt and the tokens so far).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrate.errors import TaskCancelledError
from orchestrate.llm.compute import ComputeThread, compute_thread
from orchestrate.llm.decoder import Decoder

logger = logging.getLogger(__name__)

SAMPLING_TOP_K = 50  # transformers' default for do_sample
LeaseFactory = Callable[[], contextlib.AbstractContextManager[Any]]


@dataclass
class GenerationJob:
    """One prompt to complete; the scheduler fills in the result and sets ``done``."""

    prompt_ids: list[int]
    max_new: int
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    cancel: threading.Event = field(default_factory=threading.Event)
    on_progress: Callable[[int], None] | None = None
    lease: LeaseFactory | None = None  # device lease for the batch this job starts
    generated: list[int] = field(default_factory=list)
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Row:
    """A job in the running batch, and the token it feeds to the next step."""

    job: GenerationJob
    next_token: int = -1


class BatchingEngine:
    """Decodes every waiting request together, one token per step per request."""

    def __init__(
        self,
        decoder: Decoder,
        tokenizer: Any,
        *,
        eos: frozenset[int],
        tokenizer_lock: threading.Lock,
        repetition_penalty: float,
        max_batch: int = 4,
        compute: ComputeThread = compute_thread,
    ) -> None:
        self._decoder = decoder
        self._compute = compute
        self._tokenizer = tokenizer
        self._tokenizer_lock = tokenizer_lock
        self._penalty = repetition_penalty
        self.max_batch = max(1, max_batch)
        self._eos = eos
        self._vocab = decoder.vocab_size
        self._device = decoder.device
        self._pending: list[GenerationJob] = []
        self._pending_lock = threading.Lock()
        self._scheduled = False  # a drain is running or queued on the compute thread
        # The running batch, touched by the drain only; row i of the decoder is
        # self._rows[i].
        self._rows: list[_Row] = []
        self._seen: Any = None  # [batch, vocab] bool: tokens the penalty applies to
        self._lease: contextlib.ExitStack | None = None
        self.steps = 0  # decoding steps run, for tests and benchmarks
        self.widest = 0  # the most rows one step decoded

    def run(self, job: GenerationJob) -> list[int]:
        """Queue the job, wait for it, and return its new tokens (or raise its error)."""
        if job.cancel.is_set():
            raise TaskCancelledError("cancelled before generation started")
        with self._pending_lock:
            self._pending.append(job)
            if not self._scheduled:
                self._scheduled = True
                self._compute.submit(self._drain)
        job.done.wait()
        if job.error is not None:
            raise job.error
        if job.cancel.is_set():
            raise TaskCancelledError("cancelled during generation")
        return job.generated

    def _drain(self) -> None:
        """Admit and decode until no work is left, or until other work waits for the
        compute thread (another model's batch, a load): then queue up again behind it."""
        import torch

        with torch.inference_mode():
            while True:
                with self._pending_lock:
                    if not self._pending and not self._rows:
                        self._scheduled = False
                        return
                    free = self.max_batch - len(self._rows)
                    joining, self._pending = self._pending[:free], self._pending[free:]
                try:
                    for job in joining:
                        self._admit(job)
                    if self._rows:
                        self._step()
                except Exception as exc:  # the model failed: fail every job it holds
                    logger.exception("the embedded batch failed")
                    self._fail_all(exc, joining)
                if self._compute.others_waiting():
                    self._compute.submit(self._drain)
                    return

    def _admit(self, job: GenerationJob) -> None:
        """Prefill the job's prompt as a new row of the batch and pick its first token."""
        import torch

        if job.cancel.is_set() or job.max_new <= 0:
            job.done.set()
            return
        if not self._rows and job.lease is not None:
            stack = contextlib.ExitStack()
            stack.enter_context(job.lease())
            self._lease = stack
        logits = self._decoder.prefill(job.prompt_ids)
        seen = torch.zeros((1, self._vocab), dtype=torch.bool, device=self._device)
        seen[0, torch.tensor(job.prompt_ids, dtype=torch.long, device=self._device)] = True
        row = _Row(job)
        self._rows.append(row)
        self._seen = seen if self._seen is None else torch.cat([self._seen, seen], dim=0)
        token = self._choose(logits.unsqueeze(0), [row])[0]
        self._advance([(row, token)])

    def _step(self) -> None:
        """Decode one token for every row."""
        logits = self._decoder.step([row.next_token for row in self._rows])
        self.steps += 1
        self.widest = max(self.widest, len(self._rows))
        tokens = self._choose(logits, self._rows)
        self._advance(list(zip(self._rows, tokens, strict=True)))

    def _choose(self, logits: Any, rows: list[_Row]) -> list[int]:
        """The next token of each row: repetition penalty, then greedy or sampled."""
        import torch

        logits = logits.float()
        seen = self._seen[-len(rows) :] if len(rows) < len(self._rows) else self._seen
        if self._penalty != 1.0:
            penalised = torch.where(logits > 0, logits / self._penalty, logits * self._penalty)
            logits = torch.where(seen, penalised, logits)
        chosen = logits.argmax(dim=-1)
        for index, row in enumerate(rows):
            if row.job.temperature > 0:
                top = torch.topk(logits[index] / row.job.temperature, SAMPLING_TOP_K)
                pick = torch.multinomial(torch.softmax(top.values, dim=-1), 1)
                chosen[index] = top.indices[pick[0]]
        return [int(token) for token in chosen]

    def _advance(self, chosen: list[tuple[_Row, int]]) -> None:
        """Record each row's new token and retire the rows that are finished."""
        finished: list[int] = []
        offset = len(self._rows) - len(chosen)
        for index, (row, token) in enumerate(chosen, start=offset):
            job = row.job
            if job.cancel.is_set():
                finished.append(index)
                continue
            if token in self._eos:
                finished.append(index)
                continue
            job.generated.append(token)
            row.next_token = token
            self._seen[index, token] = True
            if job.on_progress is not None:
                job.on_progress(len(job.generated))
            if len(job.generated) >= job.max_new or self._hit_stop(job):
                finished.append(index)
        if finished:
            self._retire(finished)

    def _hit_stop(self, job: GenerationJob) -> bool:
        if not job.stop:
            return False
        with self._tokenizer_lock:
            # The stop string ends within the last few tokens; decode a window, not all.
            tail = self._tokenizer.decode(job.generated[-16:], skip_special_tokens=True)
        return any(stop and stop in tail for stop in job.stop)

    def _retire(self, indices: list[int]) -> None:
        import torch

        for index in indices:
            self._rows[index].job.done.set()
        keep = [i for i in range(len(self._rows)) if i not in set(indices)]
        self._rows = [self._rows[i] for i in keep]
        self._decoder.keep(keep)
        if not self._rows:
            self._seen = None
            self._release_lease()
            return
        self._seen = self._seen[torch.tensor(keep, dtype=torch.long, device=self._device)]

    def _release_lease(self) -> None:
        if self._lease is not None:
            lease, self._lease = self._lease, None
            lease.close()

    def _fail_all(self, error: Exception, joining: list[GenerationJob]) -> None:
        for job in [row.job for row in self._rows] + joining:
            if not job.done.is_set():
                job.error = error
                job.done.set()
        self._rows, self._seen = [], None
        with contextlib.suppress(Exception):  # the decoder may be what failed
            self._decoder.keep([])
        self._release_lease()


def eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Every token that ends an answer: the generation config's and the tokenizer's."""
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    return frozenset(ids)
