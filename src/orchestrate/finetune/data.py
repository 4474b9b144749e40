"""Training examples: read them, check them, split them, and turn them into tokens.

Three sources give the same thing, a chat whose last message is the answer to learn:

- JSONL with ``{"messages": [{"role": ..., "content": ...}, ...]}`` per line;
- JSONL with ``{"prompt": ..., "completion": ...}`` per line;
- a runs folder (or one run's folder): every succeeded task of a run the critic
  approved, its prompt rebuilt as its agent saw it (the task description with the spec,
  then the answers of the tasks it reads from) and its stored answer.

A line that cannot be used is reported with its number and skipped; a dataset left with
fewer than two examples is refused, because one example is held out for the eval loss.
``encode`` turns a chat into tokens whose loss covers the answer only, and ``Batches``
picks and pads each step's examples.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrate.errors import UserInputError

ROLES = ("system", "user", "assistant")
MIN_EXAMPLES = 2
EVAL_SHARE = 0.1
MAX_EVAL_EXAMPLES = 64
IGNORE_INDEX = -100  # label of a token the loss skips (prompt and padding)


@dataclass(frozen=True)
class Example:
    """One chat; the last message is the assistant's answer the model learns."""

    messages: tuple[tuple[str, str], ...]  # (role, content)
    source: str  # where it came from: "data.jsonl:12" or "runs/<id>/implement"

    def as_chat(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


@dataclass
class Dataset:
    """The usable examples of a source, the problems met on the way, and its hash."""

    examples: list[Example]
    problems: list[str] = field(default_factory=list)
    sha256: str = ""

    def split(self, seed: int = 0) -> tuple[list[Example], list[Example]]:
        """Train and held-out examples: a tenth held out (at least one, at most 64)."""
        order = list(self.examples)
        random.Random(seed).shuffle(order)
        held = min(MAX_EVAL_EXAMPLES, max(1, round(len(order) * EVAL_SHARE)))
        return order[held:], order[:held]


def load_dataset(path: Path) -> Dataset:
    """Read a JSONL file or a runs folder; refuse it when too little is usable."""
    if path.is_dir():
        dataset = _from_runs(path)
    elif path.is_file():
        dataset = _from_jsonl(path)
    else:
        raise UserInputError(f"--data {path} does not exist: give a JSONL file or a runs folder")
    if len(dataset.examples) < MIN_EXAMPLES:
        found = f"{len(dataset.examples)} usable example{'s' * (len(dataset.examples) != 1)}"
        first = f" (first problem: {dataset.problems[0]})" if dataset.problems else ""
        raise UserInputError(
            f"--data {path} has {found}; at least {MIN_EXAMPLES} are needed, one being held "
            f"out for the eval loss{first}"
        )
    dataset.sha256 = _fingerprint(dataset.examples)
    return dataset


def _from_jsonl(path: Path) -> Dataset:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"cannot read --data {path}: {exc}") from exc
    dataset = Dataset([])
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            messages = _parse_record(json.loads(line))
        except json.JSONDecodeError as exc:
            dataset.problems.append(f"line {number}: not JSON ({exc.msg})")
        except ValueError as exc:
            dataset.problems.append(f"line {number}: {exc}")
        else:
            dataset.examples.append(Example(messages, f"{path.name}:{number}"))
    return dataset


def _parse_record(record: Any) -> tuple[tuple[str, str], ...]:
    """A line's chat, or ValueError saying what is wrong with it."""
    if not isinstance(record, dict):
        raise ValueError("expected an object with 'messages', or 'prompt' and 'completion'")
    if "messages" in record:
        return _parse_messages(record["messages"])
    prompt, completion = record.get("prompt"), record.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise ValueError("expected 'messages', or 'prompt' and 'completion' as strings")
    if not prompt.strip() or not completion.strip():
        raise ValueError("'prompt' and 'completion' must not be empty")
    return (("user", prompt), ("assistant", completion))


def _parse_messages(messages: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    parsed = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"message {index} is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"message {index} has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"message {index} has no text 'content'")
        parsed.append((role, content))
    if parsed[-1][0] != "assistant" or not parsed[-1][1].strip():
        raise ValueError("the last message must be a non-empty assistant answer")
    if not any(role == "user" for role, _ in parsed[:-1]):
        raise ValueError("no user message before the answer")
    return tuple(parsed)


def _from_runs(path: Path) -> Dataset:
    """Pairs from the approved runs under ``path`` (or from ``path``, one run's folder)."""
    folders = [path] if (path / "run.json").is_file() else sorted(path.glob("*/run.json"))
    run_dirs = [folder if folder.is_dir() else folder.parent for folder in folders]
    dataset = Dataset([])
    if not run_dirs:
        dataset.problems.append(f"{path} holds no run.json (neither a run nor a runs folder)")
    for run_dir in run_dirs:
        try:
            dataset.examples += _run_examples(run_dir, dataset.problems)
        except ValueError as exc:
            dataset.problems.append(f"{run_dir.name}: {exc}")
    return dataset


def _run_examples(run_dir: Path, problems: list[str]) -> list[Example]:
    try:
        record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"unreadable run.json ({exc})") from exc
    if not isinstance(record, dict) or not isinstance(record.get("tasks"), dict):
        raise ValueError("run.json has no 'tasks'")
    if record.get("verdict") != "approve":
        problems.append(f"{run_dir.name}: skipped, verdict {record.get('verdict')!r}")
        return []
    from orchestrate.crew.config import CHECKS_TASK

    crew = _crew_of(record)
    spec_text = str(record.get("spec_text") or "")
    answers = _answers(run_dir, record["tasks"])
    examples = []
    for name in answers:
        if name == CHECKS_TASK:
            continue  # the sandbox's account of the checks, not a model's answer
        task = crew.tasks.get(name)
        if task is None or task.agent not in crew.agents:
            problems.append(f"{run_dir.name}/{name}: not in the run's crew, skipped")
            continue
        prompt = _task_prompt(task, spec_text, answers, record["tasks"])
        agent = crew.agents[task.agent]
        system = f"You are {agent.role}. {agent.goal}".strip()
        messages = (("system", system), ("user", prompt), ("assistant", answers[name]))
        examples.append(Example(messages, f"{run_dir.name}/{name}"))
    return examples


def _crew_of(record: dict[str, Any]) -> Any:
    """The crew the run recorded, or the bundled one for runs that recorded none."""
    from pydantic import ValidationError

    from orchestrate.crew.config import CrewConfig, load_crew

    try:
        return CrewConfig.model_validate(record.get("crew") or {})
    except ValidationError:
        return load_crew(None).config


def _answers(run_dir: Path, tasks: dict[str, Any]) -> dict[str, str]:
    """The stored answer of every succeeded task that has one."""
    answers = {}
    for name, task in tasks.items():
        if not isinstance(task, dict) or task.get("state") != "succeeded":
            continue
        answer_path = run_dir / "tasks" / f"{name}.md"
        try:
            answer = answer_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if answer.strip():
            answers[name] = answer
    return answers


def _task_prompt(task: Any, spec_text: str, answers: dict[str, str], tasks: dict[str, Any]) -> str:
    """The task as its agent received it: description and spec, then its inputs' answers."""
    from orchestrate.agents import task_description

    prompt = task_description(task, spec_text)
    sections = []
    for dependency in task.context:
        if dependency in answers:
            role = tasks.get(dependency, {}).get("role", dependency)
            sections.append(f"## Output of '{dependency}' ({role})\n\n{answers[dependency]}")
    if sections:
        prompt += "\n\nThis is the context you're working with:\n" + "\n\n".join(sections)
    return prompt


def _fingerprint(examples: list[Example]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps(example.messages, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class EncodedExample:
    """Token ids and labels; prompt tokens are labelled IGNORE_INDEX."""

    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def encode(tokenizer: Any, example: Example, max_length: int) -> EncodedExample:
    """Tokenise a chat with its template; only the answer's tokens carry a loss.

    A chat longer than ``max_length`` loses the start of its prompt first (the end is
    what the answer follows), keeping at least half the window for the answer.
    """
    chat = example.as_chat()
    prompt = _template_ids(tokenizer, chat[:-1], add_generation_prompt=True)
    full = _template_ids(tokenizer, chat, add_generation_prompt=False)
    if full[: len(prompt)] != prompt:  # a template that rewrites earlier turns
        full = prompt + tokenizer(chat[-1]["content"], add_special_tokens=False)["input_ids"]
    answer = full[len(prompt) :]
    keep_prompt = min(len(prompt), max(max_length - len(answer), max_length // 2))
    prompt = prompt[len(prompt) - keep_prompt :]
    answer = answer[: max_length - keep_prompt]
    return EncodedExample(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer)


def _template_ids(
    tokenizer: Any, chat: list[dict[str, str]], *, add_generation_prompt: bool
) -> list[int]:
    if getattr(tokenizer, "chat_template", None) is None:  # a base model: plain turns
        text = "".join(f"{message['role']}: {message['content']}\n" for message in chat)
        text += "assistant: " if add_generation_prompt else ""
        return [int(token) for token in tokenizer(text)["input_ids"]]
    ids = tokenizer.apply_chat_template(
        chat, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True
    )["input_ids"]
    return [int(token) for token in ids]


class Batches:
    """Step ``s``'s batch: a seeded shuffle per epoch, padded to its longest example."""

    def __init__(self, examples: list[EncodedExample], batch_size: int, pad_id: int, seed: int):
        self.examples = examples
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.seed = seed

    def for_step(self, step: int) -> list[EncodedExample]:
        count = len(self.examples)
        start = (step - 1) * self.batch_size
        chosen = []
        for position in range(start, start + self.batch_size):
            epoch, index = divmod(position, count)
            order = list(range(count))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            chosen.append(self.examples[order[index]])
        return chosen

    def collate(self, batch: list[EncodedExample], device: str) -> dict[str, Any]:
        import torch

        width = max(len(example.input_ids) for example in batch)
        ids, labels, mask = [], [], []
        for example in batch:
            padding = width - len(example.input_ids)
            ids.append(example.input_ids + [self.pad_id] * padding)
            labels.append(example.labels + [IGNORE_INDEX] * padding)
            mask.append([1] * len(example.input_ids) + [0] * padding)
        return {
            "input_ids": torch.tensor(ids, device=device),
            "labels": torch.tensor(labels, device=device),
            "attention_mask": torch.tensor(mask, device=device),
        }
