"""Tests for orchestrate.crew.spec.load_spec."""

from __future__ import annotations

import pytest

from orchestrate.bundled import bundled_path
from orchestrate.crew.spec import TITLE_LENGTH, load_spec
from orchestrate.errors import SpecError


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_inline_text():
    spec = load_spec("  Build a todo CLI\nwith tags and due dates  ")
    assert spec.title == "Build a todo CLI"
    assert spec.text == "Build a todo CLI\nwith tags and due dates"
    assert spec.source == "inline"


def test_inline_sentence_mentioning_a_file_name_is_text():
    spec = load_spec("Update notes.md please")
    assert spec.source == "inline"
    assert spec.text == "Update notes.md please"


def test_inline_title_skips_blank_lines_and_heading_marks():
    assert load_spec("\n\n## My project\nmore").title == "My project"


def test_markdown_file_title_from_first_heading(tmp_path):
    path = tmp_path / "spec.md"
    path.write_text("\n\n# Notes API\n\nA small API for notes.\n", encoding="utf-8")
    spec = load_spec(str(path))
    assert spec.title == "Notes API"
    assert spec.text == "# Notes API\n\nA small API for notes."
    assert spec.source == str(path)


def test_relative_file_path_is_read(tmp_path):
    (tmp_path / "idea.txt").write_text("Make a game\n", encoding="utf-8")
    spec = load_spec("idea.txt")
    assert (spec.title, spec.text, spec.source) == ("Make a game", "Make a game", "idea.txt")


def test_yaml_spec_file_to_text(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(
        "title: Todo\n"
        "description: A todo CLI.\n"
        "stack: Python\n"
        "requirements: [add, list]\n"
        "constraints: [no deps]\n",
        encoding="utf-8",
    )
    spec = load_spec(str(path))
    assert spec.title == "Todo"
    assert spec.text == (
        "# Todo\n\nA todo CLI.\n\nStack: Python\n\n"
        "Requirements:\n- add\n- list\n\nConstraints:\n- no deps"
    )
    assert spec.source == str(path)


def test_yaml_spec_optional_sections_omitted(tmp_path):
    path = tmp_path / "spec.yml"
    path.write_text("title: Todo\ndescription: |\n  A todo CLI.\n", encoding="utf-8")
    assert load_spec(str(path)).text == "# Todo\n\nA todo CLI."


def test_yaml_unknown_key_is_a_spec_error(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("title: T\ndescription: D\ncolour: red\n", encoding="utf-8")
    with pytest.raises(SpecError, match=r"colour: unknown key"):
        load_spec(str(path))


def test_yaml_missing_key_is_a_spec_error(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("title: T\n", encoding="utf-8")
    with pytest.raises(SpecError, match=r"description: required key is missing"):
        load_spec(str(path))


def test_bad_yaml_is_a_spec_error(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("title: [\n", encoding="utf-8")
    with pytest.raises(SpecError, match=r"is not valid YAML"):
        load_spec(str(path))


@pytest.mark.parametrize("name", ["missing.md", "missing.yaml", "sub/missing.txt"])
def test_missing_spec_file_is_a_spec_error(name):
    with pytest.raises(SpecError, match=rf"spec file not found: {name}"):
        load_spec(name)


@pytest.mark.parametrize("text", ["", "   ", "\n\t\n"])
def test_empty_text_is_a_spec_error(text):
    with pytest.raises(SpecError, match=r"the spec is empty"):
        load_spec(text)


def test_empty_file_is_a_spec_error(tmp_path):
    path = tmp_path / "empty.md"
    path.write_text(" \n\n", encoding="utf-8")
    with pytest.raises(SpecError, match=r"is empty"):
        load_spec(str(path))


def test_long_title_is_truncated():
    spec = load_spec("x" * 200)
    assert spec.title == "x" * (TITLE_LENGTH - 1) + "…"
    assert len(spec.title) == TITLE_LENGTH
    assert spec.text == "x" * 200


def test_title_truncation_strips_trailing_space():
    spec = load_spec("x" + "word " * 40)  # the cut falls just after a space
    assert spec.title == "x" + "word " * 13 + "word…"
    assert len(spec.title) == TITLE_LENGTH - 1


def test_title_at_limit_is_kept():
    assert load_spec("y" * TITLE_LENGTH).title == "y" * TITLE_LENGTH


def test_bundled_examples_load():
    markdown = load_spec(str(bundled_path("examples/specs/notes-api.md")))
    assert markdown.title == "Notes API"
    yaml_spec = load_spec(str(bundled_path("examples/specs/todo-cli.yaml")))
    assert yaml_spec.title == "Todo CLI"
    assert "Requirements:\n- `todo add TEXT`" in yaml_spec.text
