"""Parse file blocks out of a model's answer.

The format agents are asked to use is a header line naming the file, then a fenced
code block with its whole content::

    FILE: src/app.py
    ```python
    print("hello")
    ```

Models are sloppy, so the header may also be a Markdown heading or bold text
(``### File: `src/app.py` ``), in any case, and fences may use backticks or tildes of
any length >= 3 (use a longer fence to wrap content that contains a fence). Anything
the parser cannot read becomes a ``BlockProblem``; it never raises.

Small models often drop the header and write a bare fenced block. With ``repair=True``
(used for tasks whose answer is files, not a document) such a block still becomes a
file: named by a path on the line before it (``**`src/app.py`**``, ``app.py:``), or by a
comment naming a file on its first line (``# app.py``), or else by a default per
language (``main.py`` for Python); a block with neither a name nor a known language is
left alone, and so is an answer's last block when it is cut off without a closing
fence, unless it has a name. Repaired blocks are marked, so callers can report them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The keyword, after optional heading marks or bold; the rest of the line is the path,
# cleaned up in `_path_from`. Kept free of nested optional groups so that a long line
# cannot make it backtrack.
_HEADER = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]*)?(?P<marks>[*_]*)[ \t]*file[ \t]*:(?P<rest>.*)$", re.IGNORECASE
)
_MAX_HEADER_CHARS = 1100  # longer than any path the writer would accept
_FENCE_OPEN = re.compile(r"^\s*(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")


@dataclass(frozen=True)
class FileBlock:
    """A file the model asked us to write."""

    path: str
    content: str
    line: int  # 1-based line of the header in the answer
    repaired: bool = False  # found by the repair pass, not under a FILE header


@dataclass(frozen=True)
class BlockProblem:
    """Something that looked like a file block but could not be read."""

    line: int
    reason: str
    path: str | None = None


@dataclass(frozen=True)
class ParsedAnswer:
    blocks: list[FileBlock]
    problems: list[BlockProblem]


def parse_file_blocks(answer: str, *, repair: bool = False) -> ParsedAnswer:
    """Return every well-formed file block and a problem for each malformed one.

    With ``repair``, fenced blocks without a FILE header become files too (see above).
    """
    lines = answer.splitlines()
    blocks: dict[str, FileBlock] = {}
    problems: list[BlockProblem] = []
    claimed: set[int] = set()  # lines inside blocks read under a header
    index = 0
    while index < len(lines):
        header = _HEADER.match(lines[index]) if len(lines[index]) <= _MAX_HEADER_CHARS else None
        path = _path_from(header.group("rest"), header.group("marks")) if header else ""
        if not path:
            index += 1
            continue
        start = index
        block, index = _read_block(lines, index, path)
        claimed.update(range(start, index))
        if isinstance(block, BlockProblem):
            if repair and block.reason.startswith("the code block is never closed"):
                blocks[path] = _cut_off_block(lines, start, path)
            problems.append(block)
            continue
        if block.path in blocks:
            problems.append(
                BlockProblem(block.line, "the file appears twice; the last block is kept", path)
            )
        blocks[block.path] = block
    if repair:
        for block in _unlabelled_blocks(lines, claimed, set(blocks)):
            blocks[block.path] = block
    return ParsedAnswer(list(blocks.values()), problems)


# A path-like word: a folder part or a file name with an extension, or a known bare name.
_SOURCE_EXTENSIONS = (
    "py|pyi|js|mjs|cjs|jsx|ts|tsx|html|css|sh|yaml|yml|json|toml|md|txt|sql|go|rs|java|"
    "ini|cfg|env|rb|php|c|h|cpp|hpp|cs|kt|swift|xml|csv|lock"
)
_PATH_WORD = re.compile(
    rf"(?<![\w/.-])((?:[\w.-]+/)*(?:[\w-]+(?:\.[\w-]+)*\.(?:{_SOURCE_EXTENSIONS})"
    r"|Dockerfile|Makefile|requirements\.txt))(?![\w/.-]*\w)"
)
_FIRST_LINE_NAME = re.compile(
    r"^\s*(?:#|//|--|/\*|<!--)\s*(?:file\s*:\s*)?(?P<path>\S+)\s*(?:\*/|-->)?\s*$", re.I
)
# The file a bare block of each language most likely is, when nothing names it.
DEFAULT_NAMES = {
    "python": "main.py",
    "py": "main.py",
    "javascript": "index.js",
    "js": "index.js",
    "typescript": "index.ts",
    "ts": "index.ts",
    "html": "index.html",
    "css": "style.css",
    "bash": "run.sh",
    "sh": "run.sh",
    "shell": "run.sh",
    "dockerfile": "Dockerfile",
    "docker": "Dockerfile",
    "makefile": "Makefile",
    "make": "Makefile",
    "toml": "pyproject.toml",
    "yaml": "config.yaml",
    "yml": "config.yaml",
    "json": "data.json",
    "sql": "schema.sql",
    "go": "main.go",
    "rust": "main.rs",
    "java": "Main.java",
    "ini": "config.ini",
    "requirements": "requirements.txt",
}


def first_path(text: str) -> str | None:
    """The first relative file path a text mentions (``src/app.py``, ``Dockerfile``)."""
    for match in _PATH_WORD.finditer(text.replace("`", " ").replace("*", " ")):
        if not match.group(1).startswith("."):
            return match.group(1)
    return None


def _unlabelled_blocks(lines: list[str], claimed: set[int], taken: set[str]) -> list[FileBlock]:
    """Name the fenced blocks no header claimed: from nearby text, a comment, or a default."""
    found: list[FileBlock] = []
    names = set(taken)
    index = 0
    while index < len(lines):
        opening = _FENCE_OPEN.match(lines[index]) if index not in claimed else None
        if opening is None:
            index += 1
            continue
        fence, language = opening.group("fence"), opening.group("info").strip().lower()
        end = index + 1
        while end < len(lines) and not _closes(lines[end], fence):
            end += 1
        closed = end < len(lines)
        body = lines[index + 1 : end]
        path, body = _name_for(lines, index, language, body)
        if path is not None and body and (closed or not path.startswith("?")):
            path = _unique(path.lstrip("?"), names)
            names.add(path)
            found.append(FileBlock(path, "\n".join(body) + "\n", index + 1, repaired=True))
        index = end + 1
    return found


def _name_for(
    lines: list[str], fence_index: int, language: str, body: list[str]
) -> tuple[str | None, list[str]]:
    """The block's path (``?`` first when it is only a default name) and its content."""
    for back in range(fence_index - 1, max(-1, fence_index - 3), -1):
        text = lines[back].strip()
        if not text:
            continue
        if _FENCE_OPEN.match(text) or _closes(text, "```"):
            break
        match = _PATH_WORD.search(text.replace("`", " ").replace("*", " "))
        if match and not match.group(1).startswith("."):
            return match.group(1), body
        break
    if body:
        first = _FIRST_LINE_NAME.match(body[0])
        if first and _PATH_WORD.fullmatch(first.group("path")):
            return first.group("path"), body[1:]
    default = DEFAULT_NAMES.get(language.split()[0] if language else "")
    return ("?" + default, body) if default else (None, body)


def _unique(path: str, names: set[str]) -> str:
    """``main.py``, then ``main_2.py``, ``main_3.py`` for more blocks of one default."""
    if path not in names:
        return path
    stem, dot, suffix = path.rpartition(".")
    if not dot:
        stem, suffix = path, ""
    number = 2
    while True:
        candidate = f"{stem}_{number}{dot}{suffix}"
        if candidate not in names:
            return candidate
        number += 1


def _cut_off_block(lines: list[str], header_index: int, path: str) -> FileBlock:
    """A headed block the answer ended inside: what there is, marked repaired."""
    index = header_index + 1
    while index < len(lines) and not lines[index].strip():
        index += 1
    content = "\n".join(lines[index + 1 :])
    return FileBlock(path, content + "\n" if content else "", header_index + 1, repaired=True)


def _path_from(rest: str, opening_marks: str) -> str:
    """Strip the emphasis and backticks models put around a path.

    Underscores close an emphasis only when one opened it before the keyword, so that
    a path like ``__init__.py`` keeps its own.
    """
    path = rest.strip().strip("*").strip()
    underscores = opening_marks.count("_")
    if underscores and path.endswith("_" * underscores):
        path = path[:-underscores].strip()
    path = path.strip("`").strip()
    # Backticks or asterisks left inside mean prose that merely starts with "File:".
    return "" if "`" in path or "*" in path else path


def _read_block(
    lines: list[str], header_index: int, path: str
) -> tuple[FileBlock | BlockProblem, int]:
    """Read the fence after a header; return the block or a problem, and the next line."""
    header_line = header_index + 1
    index = header_index + 1
    while index < len(lines) and not lines[index].strip():
        index += 1
    opening = _FENCE_OPEN.match(lines[index]) if index < len(lines) else None
    if opening is None:
        reason = "no fenced code block follows the FILE header"
        return BlockProblem(header_line, reason, path), index
    fence = opening.group("fence")
    body: list[str] = []
    index += 1
    while index < len(lines):
        if _closes(lines[index], fence):
            content = "\n".join(body) + "\n" if body else ""
            return FileBlock(path, content, header_line), index + 1
        body.append(lines[index])
        index += 1
    reason = "the code block is never closed (the answer may have been cut off)"
    return BlockProblem(header_line, reason, path), index


def _closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    return len(stripped) >= len(fence) and set(stripped) == {fence[0]}
