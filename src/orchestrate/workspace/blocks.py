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


def parse_file_blocks(answer: str) -> ParsedAnswer:
    """Return every well-formed file block and a problem for each malformed one."""
    lines = answer.splitlines()
    blocks: dict[str, FileBlock] = {}
    problems: list[BlockProblem] = []
    index = 0
    while index < len(lines):
        header = _HEADER.match(lines[index]) if len(lines[index]) <= _MAX_HEADER_CHARS else None
        path = _path_from(header.group("rest"), header.group("marks")) if header else ""
        if not path:
            index += 1
            continue
        block, index = _read_block(lines, index, path)
        if isinstance(block, BlockProblem):
            problems.append(block)
            continue
        if block.path in blocks:
            problems.append(
                BlockProblem(block.line, "the file appears twice; the last block is kept", path)
            )
        blocks[block.path] = block
    return ParsedAnswer(list(blocks.values()), problems)


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
