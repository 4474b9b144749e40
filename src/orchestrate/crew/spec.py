"""The spec: what the user wants built, given as text or as a Markdown/YAML file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrate.errors import SpecError, describe_validation_error

SPEC_FILE_SUFFIXES = {".md", ".markdown", ".txt", ".yaml", ".yml"}
MAX_SPEC_BYTES = 200_000
TITLE_LENGTH = 72


@dataclass(frozen=True)
class Spec:
    """A spec ready for the crew: a short title for listings and the full text."""

    title: str
    text: str
    source: str  # "inline" or the file path it came from


class YamlSpec(BaseModel):
    """The fields a YAML spec file may have."""

    model_config = ConfigDict(extra="forbid")

    title: str
    description: str
    requirements: list[str] = Field(default_factory=list)
    constraints: list[str] = Field(default_factory=list)
    stack: str | None = None

    def to_text(self) -> str:
        sections = [f"# {self.title.strip()}", self.description.strip()]
        if self.stack:
            sections.append(f"Stack: {self.stack}")
        for heading, items in (
            ("Requirements", self.requirements),
            ("Constraints", self.constraints),
        ):
            if items:
                sections.append(f"{heading}:\n" + "\n".join(f"- {item}" for item in items))
        return "\n\n".join(sections)


def load_spec(argument: str) -> Spec:
    """Read SPEC as a file path when it names one, otherwise take it as the spec text."""
    path = Path(argument)
    if _names_a_file(argument, path):
        return _read_spec_file(path)
    text = argument.strip()
    if not text:
        raise SpecError("the spec is empty: pass a description in quotes or a spec file path")
    return Spec(title=_title_from_text(text), text=text, source="inline")


def _names_a_file(argument: str, path: Path) -> bool:
    if "\n" in argument or len(argument) > 4096:
        return False
    if path.suffix.lower() in SPEC_FILE_SUFFIXES and " " not in argument:
        return True  # meant as a path: a missing file is an error, not a spec
    return path.is_file()


def _read_spec_file(path: Path) -> Spec:
    if not path.is_file():
        raise SpecError(f"spec file not found: {path} (pass spec text in quotes, or a file path)")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise SpecError(f"spec file {path} is over {MAX_SPEC_BYTES} bytes; shorten it")
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read spec file {path}: {exc}") from exc
    if path.suffix.lower() in {".yaml", ".yml"}:
        parsed = _parse_yaml_spec(path, content)
        return Spec(title=_shorten(parsed.title), text=parsed.to_text(), source=str(path))
    text = content.strip()
    if not text:
        raise SpecError(f"spec file {path} is empty; describe the project to build in it")
    return Spec(title=_title_from_text(text), text=text, source=str(path))


def _parse_yaml_spec(path: Path, content: str) -> YamlSpec:
    try:
        data = yaml.safe_load(content)
    except yaml.YAMLError as exc:
        raise SpecError(f"spec file {path} is not valid YAML: fix the syntax and retry") from exc
    try:
        return YamlSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(
            f"spec file {path}: {describe_validation_error(exc)} "
            f"(expected keys: title, description, requirements, constraints, stack)"
        ) from exc


def _title_from_text(text: str) -> str:
    first_line = next(line for line in text.splitlines() if line.strip())
    return _shorten(first_line.strip().lstrip("#"))


def _shorten(title: str) -> str:
    title = " ".join(title.split())
    if len(title) > TITLE_LENGTH:
        title = title[: TITLE_LENGTH - 1].rstrip() + "…"
    return title
