"""Tests for orchestrate.workspace.blocks.parse_file_blocks."""

from __future__ import annotations

import random

import pytest

from orchestrate.workspace.blocks import BlockProblem, FileBlock, parse_file_blocks


def test_canonical_block():
    answer = 'Here you go.\nFILE: src/app.py\n```python\nprint("hello")\n```\nDone.'
    parsed = parse_file_blocks(answer)
    assert parsed.blocks == [FileBlock("src/app.py", 'print("hello")\n', 2)]
    assert parsed.problems == []


@pytest.mark.parametrize(
    "header",
    [
        "FILE: src/app.py",
        "file:src/app.py",
        "### File: `src/app.py`",
        "## FILE: src/app.py",
        "**FILE: src/app.py**",
        "**File:** `src/app.py`",
        "__File: src/app.py__",
        "File: `src/app.py`",
        "  FILE :  src/app.py  ",
    ],
)
def test_header_variants(header):
    parsed = parse_file_blocks(f"{header}\n```\nx = 1\n```\n")
    assert parsed.blocks == [FileBlock("src/app.py", "x = 1\n", 1)]
    assert parsed.problems == []


@pytest.mark.parametrize("path", ["__init__.py", "_private.py", "foo_"])
def test_path_with_leading_underscore_is_kept(path):
    parsed = parse_file_blocks(f"FILE: {path}\n```python\npass\n```\n")
    assert [block.path for block in parsed.blocks] == [path]


def test_nested_path_with_underscores_is_kept():
    parsed = parse_file_blocks("FILE: pkg/__init__.py\n```python\n```\n")
    assert [block.path for block in parsed.blocks] == ["pkg/__init__.py"]


def test_tilde_fence():
    parsed = parse_file_blocks("FILE: notes.txt\n~~~text\nline ```\n~~~\n")
    assert parsed.blocks == [FileBlock("notes.txt", "line ```\n", 1)]


def test_longer_fence_wraps_inner_fence():
    answer = "FILE: README.md\n````markdown\nRun:\n```bash\nmake\n```\n````\n"
    parsed = parse_file_blocks(answer)
    assert parsed.blocks == [FileBlock("README.md", "Run:\n```bash\nmake\n```\n", 1)]
    assert parsed.problems == []


def test_blank_lines_between_header_and_fence():
    parsed = parse_file_blocks("FILE: a.py\n\n   \n```\nok\n```")
    assert parsed.blocks == [FileBlock("a.py", "ok\n", 1)]


def test_empty_block_has_empty_content():
    parsed = parse_file_blocks("FILE: empty.txt\n```\n```\n")
    assert parsed.blocks == [FileBlock("empty.txt", "", 1)]


def test_several_blocks_keep_order_and_lines():
    answer = "FILE: a.py\n```\na\n```\ntext\nFILE: b.py\n```\nb\n```\n"
    parsed = parse_file_blocks(answer)
    assert parsed.blocks == [FileBlock("a.py", "a\n", 1), FileBlock("b.py", "b\n", 6)]


def test_unterminated_block_is_a_problem_not_a_block():
    parsed = parse_file_blocks("FILE: a.py\n```python\nprint(1)\n")
    assert parsed.blocks == []
    assert len(parsed.problems) == 1
    problem = parsed.problems[0]
    assert (problem.line, problem.path) == (1, "a.py")
    assert "never closed" in problem.reason


def test_shorter_fence_does_not_close_longer_one():
    parsed = parse_file_blocks("FILE: a.md\n````\n```\n")
    assert parsed.blocks == []
    assert [p.path for p in parsed.problems] == ["a.md"]


def test_header_without_fence_is_a_problem_and_next_block_still_parsed():
    answer = "FILE: a.py\nprint(1)\n\nFILE: b.py\n```\nb\n```\n"
    parsed = parse_file_blocks(answer)
    assert parsed.blocks == [FileBlock("b.py", "b\n", 4)]
    assert parsed.problems == [
        BlockProblem(1, "no fenced code block follows the FILE header", "a.py")
    ]


def test_header_at_end_is_a_problem():
    parsed = parse_file_blocks("text\nFILE: last.py")
    assert parsed.blocks == []
    assert [(p.line, p.path) for p in parsed.problems] == [(2, "last.py")]


def test_duplicate_path_keeps_last_and_reports_problem():
    answer = "FILE: a.py\n```\none\n```\nFILE: a.py\n```\ntwo\n```\n"
    parsed = parse_file_blocks(answer)
    assert parsed.blocks == [FileBlock("a.py", "two\n", 5)]
    assert len(parsed.problems) == 1
    assert (parsed.problems[0].line, parsed.problems[0].path) == (5, "a.py")
    assert "appears twice" in parsed.problems[0].reason


def test_text_without_headers_gives_nothing():
    parsed = parse_file_blocks("Just prose.\n```python\nx = 1\n```\n")
    assert parsed.blocks == []
    assert parsed.problems == []


def test_empty_answer():
    parsed = parse_file_blocks("")
    assert (parsed.blocks, parsed.problems) == ([], [])


PIECES = [
    "FILE: a.py",
    "File:",
    "### file: `b.md`",
    "**FILE:**",
    "```",
    "````",
    "~~~",
    "`",
    "*",
    "_",
    "#",
    " ",
    "\t",
    "\n",
    "\r\n",
    "x",
    ":",
    "é",
    "\x00",
]


def test_never_raises_on_garbage():
    rng = random.Random(1234)
    for _ in range(2000):
        answer = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 40)))
        parsed = parse_file_blocks(answer)
        line_count = max(len(answer.splitlines()), 1)
        for block in parsed.blocks:
            assert block.path == block.path.strip()
            assert block.path
            assert "`" not in block.path
            assert 1 <= block.line <= line_count
        for problem in parsed.problems:
            assert 1 <= problem.line <= line_count


def test_bold_header_around_a_dunder_path():
    parsed = parse_file_blocks("**FILE: __main__.py**\n```python\npass\n```\n")
    assert [block.path for block in parsed.blocks] == ["__main__.py"]


def test_a_header_like_line_of_spaces_is_no_path():
    # A line like this made the first header pattern backtrack for seconds.
    parsed = parse_file_blocks("FILE: a" + " " * 1000 + "`x\n```\nx\n```\n")
    assert parsed.blocks == []


def test_a_line_too_long_to_hold_a_path_is_not_a_header():
    parsed = parse_file_blocks("FILE: " + "a" * 2000 + "\n```\nx\n```\n")
    assert parsed.blocks == []


# The repair pass (repair=True), for tasks whose answer is files.


def test_repair_names_a_bare_python_block_by_its_language():
    parsed = parse_file_blocks("Here is the code:\n```python\nx = 1\n```\n", repair=True)
    assert parsed.blocks == [FileBlock("main.py", "x = 1\n", 2, repaired=True)]
    assert parse_file_blocks("```python\nx = 1\n```\n").blocks == []  # strict by default


@pytest.mark.parametrize(
    "before",
    ["app/cli.py:", "**`app/cli.py`**", "### app/cli.py", "Save this as `app/cli.py`."],
)
def test_repair_takes_the_path_from_the_line_before(before):
    parsed = parse_file_blocks(f"{before}\n```\nx = 1\n```\n", repair=True)
    assert [(b.path, b.content) for b in parsed.blocks] == [("app/cli.py", "x = 1\n")]


@pytest.mark.parametrize("comment", ["# app/cli.py", "// app/cli.py", "# File: app/cli.py"])
def test_repair_takes_the_path_from_a_first_line_comment_and_drops_it(comment):
    parsed = parse_file_blocks(f"```python\n{comment}\nx = 1\n```\n", repair=True)
    assert [(b.path, b.content) for b in parsed.blocks] == [("app/cli.py", "x = 1\n")]


def test_repair_numbers_repeated_default_names_and_keeps_headed_blocks():
    answer = (
        "FILE: main.py\n```python\na = 1\n```\n"
        "```python\nb = 2\n```\n"
        "```python\nc = 3\n```\n"
        "```dockerfile\nFROM python:3.12\n```\n"
    )
    parsed = parse_file_blocks(answer, repair=True)
    assert [(b.path, b.repaired) for b in parsed.blocks] == [
        ("main.py", False),
        ("main_2.py", True),
        ("main_3.py", True),
        ("Dockerfile", True),
    ]


def test_repair_leaves_blocks_without_a_name_or_known_language():
    answer = "Run it:\n```\n$ python app.py\n```\n```text\noutput\n```\n"
    assert parse_file_blocks(answer, repair=True).blocks == []


def test_repair_does_not_take_version_numbers_or_abbreviations_for_paths():
    answer = "Install python3.11, e.g. like this:\n```bash\npip install x\n```\n"
    assert [b.path for b in parse_file_blocks(answer, repair=True).blocks] == ["run.sh"]


def test_repair_keeps_a_headed_block_cut_off_at_the_end_and_still_reports_it():
    parsed = parse_file_blocks("FILE: a.py\n```python\nx = 1\ny =", repair=True)
    assert parsed.blocks == [FileBlock("a.py", "x = 1\ny =\n", 1, repaired=True)]
    assert [p.path for p in parsed.problems] == ["a.py"]


def test_repair_drops_a_cut_off_bare_block_with_only_a_default_name():
    assert parse_file_blocks("```python\nx = 1", repair=True).blocks == []
    named = parse_file_blocks("app.py:\n```python\nx = 1", repair=True)
    assert [b.path for b in named.blocks] == ["app.py"]


def test_repair_never_raises_on_garbage():
    rng = random.Random(7)
    pieces = [*PIECES, "```python", "x.py:", "# y.js", "FILE: c.py"]
    for _ in range(2000):
        answer = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        parsed = parse_file_blocks(answer, repair=True)
        line_count = max(len(answer.splitlines()), 1)
        for block in parsed.blocks:
            assert block.path and block.path == block.path.strip()
            assert 1 <= block.line <= line_count
