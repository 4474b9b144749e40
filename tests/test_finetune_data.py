"""Fine-tuning data: JSONL and runs folders read, checked and split; bad input refused early.

No model is loaded here: every error below is raised before the base model is touched.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrate.cli.app import app
from orchestrate.errors import UserInputError
from orchestrate.finetune.data import Batches, EncodedExample, load_dataset

runner = CliRunner()


def chat(question: str, answer: str) -> str:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return json.dumps({"messages": messages})


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("error:") and "\n" not in message, message
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in message, message


def test_chats_and_prompt_completion_pairs_are_read(tmp_path: Path) -> None:
    data = write_lines(
        tmp_path / "data.jsonl",
        [chat("Hi", "Hello"), json.dumps({"prompt": "2+2?", "completion": "4"}), ""],
    )

    dataset = load_dataset(data)

    assert [example.messages for example in dataset.examples] == [
        (("user", "Hi"), ("assistant", "Hello")),
        (("user", "2+2?"), ("assistant", "4")),
    ]
    assert dataset.problems == [] and len(dataset.sha256) == 64


def test_bad_lines_are_reported_with_their_numbers_and_skipped(tmp_path: Path) -> None:
    data = write_lines(
        tmp_path / "data.jsonl",
        [
            chat("a", "b"),
            "{not json",
            json.dumps({"prompt": "only a prompt"}),
            chat("c", "d"),
            json.dumps({"messages": [{"role": "user", "content": "no answer"}]}),
            json.dumps({"messages": [{"role": "robot", "content": "x"}]}),
        ],
    )

    dataset = load_dataset(data)

    assert len(dataset.examples) == 2
    assert [problem.split(":")[0] for problem in dataset.problems] == [
        "line 2",
        "line 3",
        "line 5",
        "line 6",
    ]
    assert "not JSON" in dataset.problems[0]
    assert "assistant" in dataset.problems[2]
    assert "robot" in dataset.problems[3]


@pytest.mark.parametrize("lines", [[], [""], ["{bad", "[]"], [chat("only", "one")]])
def test_an_empty_or_unusable_dataset_is_refused(tmp_path: Path, lines: list[str]) -> None:
    data = write_lines(tmp_path / "data.jsonl", lines)

    with pytest.raises(UserInputError, match="at least 2 are needed"):
        load_dataset(data)


def test_the_split_holds_out_a_tenth_and_is_reproducible(tmp_path: Path) -> None:
    data = write_lines(tmp_path / "data.jsonl", [chat(f"q{i}", f"a{i}") for i in range(30)])
    dataset = load_dataset(data)

    train, held = dataset.split(seed=0)

    assert len(held) == 3 and len(train) == 27
    assert not set(train) & set(held)
    assert dataset.split(seed=0) == (train, held)


def write_run(runs: Path, run_id: str, verdict: str | None, answers: dict[str, str]) -> None:
    """A run folder as `orchestrate build` leaves it, with the bundled crew's task names."""
    folder = runs / run_id
    (folder / "tasks").mkdir(parents=True)
    tasks = {}
    for name in ("design", "implement", "test"):
        state = "succeeded" if name in answers else "failed"
        tasks[name] = {"agent": "x", "role": f"{name} role", "depends_on": [], "state": state}
        if name in answers:
            (folder / "tasks" / f"{name}.md").write_text(answers[name])
    record = {"id": run_id, "verdict": verdict, "spec_text": f"SPEC OF {run_id}", "tasks": tasks}
    (folder / "run.json").write_text(json.dumps(record))


def test_a_runs_folder_gives_the_succeeded_tasks_of_approved_runs_only(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_run(runs, "r1-approved", "approve", {"design": "DESIGN-1", "implement": "CODE-1"})
    write_run(runs, "r2-changes", "request_changes", {"design": "DESIGN-2"})
    write_run(runs, "r3-none", None, {"design": "DESIGN-3"})

    dataset = load_dataset(runs)

    by_source = {example.source: example.messages for example in dataset.examples}
    assert sorted(by_source) == ["r1-approved/design", "r1-approved/implement"]
    system, user, answer = by_source["r1-approved/implement"]
    assert system[0] == "system" and answer == ("assistant", "CODE-1")
    assert "SPEC OF r1-approved" in user[1] and "FILE:" in user[1]
    assert "DESIGN-1" in user[1]  # the design it reads from is part of its prompt
    assert any("r2-changes" in p and "request_changes" in p for p in dataset.problems)


def test_one_run_folder_works_too(tmp_path: Path) -> None:
    write_run(tmp_path / "runs", "only", "approve", {"design": "D", "implement": "C"})

    assert len(load_dataset(tmp_path / "runs" / "only").examples) == 2


def test_batches_cover_every_example_once_per_epoch() -> None:
    examples = [EncodedExample([i] * (i + 1), [i] * (i + 1)) for i in range(6)]
    batches = Batches(examples, batch_size=2, pad_id=0, seed=3)

    epoch = [example for step in (1, 2, 3) for example in batches.for_step(step)]

    assert sorted(example.input_ids[0] for example in epoch) == list(range(6))
    assert batches.for_step(2) == Batches(examples, 2, 0, 3).for_step(2)


def test_a_batch_is_padded_and_the_padding_carries_no_loss() -> None:
    pytest.importorskip("torch")
    batches = Batches([EncodedExample([5, 6, 7], [-100, 6, 7]), EncodedExample([8], [8])], 2, 0, 0)

    inputs = batches.collate(batches.examples, "cpu")

    assert inputs["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert inputs["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert inputs["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_cli_refuses_bad_input_in_one_line(isolated: Path) -> None:
    empty = write_lines(isolated / "empty.jsonl", [])
    good = write_lines(isolated / "good.jsonl", [chat("a", "b"), chat("c", "d")])

    assert_user_error(runner.invoke(app, ["finetune", "--data", "missing.jsonl"]), "does not exist")
    assert_user_error(runner.invoke(app, ["finetune", "--data", str(empty)]), "0 usable examples")
    assert_user_error(
        runner.invoke(app, ["finetune", "--data", str(good), "--steps", "0"]), "--steps"
    )
    assert_user_error(
        runner.invoke(app, ["finetune", "--data", str(good), "--device", "tpu"]), "--device"
    )
    assert_user_error(
        runner.invoke(app, ["finetune", "--data", str(good), "--resume", "--output", "none"]),
        "no checkpoint",
    )


def test_a_fresh_finetune_refuses_an_output_that_holds_one(isolated: Path) -> None:
    good = write_lines(isolated / "good.jsonl", [chat("a", "b"), chat("c", "d")])
    (isolated / "out").mkdir()
    (isolated / "out" / "adapter_config.json").write_text("{}")

    result = runner.invoke(app, ["finetune", "--data", str(good), "--output", "out"])

    assert_user_error(result, "already holds a fine-tune", "--resume")


def test_build_adapter_needs_an_embedded_model(isolated: Path) -> None:
    from conftest import EXAMPLE_SCRIPT, EXAMPLE_SPEC

    result = runner.invoke(
        app,
        ["build", str(EXAMPLE_SPEC), "--model", f"scripted:{EXAMPLE_SCRIPT}", "--adapter", "x"],
    )

    assert_user_error(result, "--adapter x needs an embedded model")


def test_help_imports_neither_mlflow_nor_peft() -> None:
    probe = (
        "import sys\n"
        "from orchestrate.cli.app import main\n"
        "for argv in (['orchestrate', '--help'], ['orchestrate', 'finetune', '--help']):\n"
        "    sys.argv = argv\n"
        "    try:\n        main()\n    except SystemExit:\n        pass\n"
        "heavy = [m for m in ('mlflow', 'peft', 'torch', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout

    assert "HEAVY []" in output
    assert "--lora-r" in output and "finetune" in output
