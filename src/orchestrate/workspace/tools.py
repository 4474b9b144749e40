"""CrewAI tools over a task's workspace: ``write_file``, ``read_file`` and ``list_files``.

For models that call tools. Every write goes through the same ``Workspace.write`` as the
file blocks of an answer (confinement, locks, atomic replace, secret scan), into the
task's staging area. A refused path or content comes back to the model as a sentence it
can act on, not as an exception that would end the task. Importing this module imports
crewai, so only code that builds agents imports it.
"""

from __future__ import annotations

from typing import Self

from crewai.tools import BaseTool
from pydantic import BaseModel, Field, PrivateAttr

from orchestrate.errors import WriteRefusedError
from orchestrate.workspace.writer import Workspace

MAX_LISTED = 500  # more names than this would flood the model's context


class WriteFileArgs(BaseModel):
    path: str = Field(description="Relative path inside the project, e.g. src/app.py.")
    content: str = Field(description="The whole content of the file.")


class ReadFileArgs(BaseModel):
    path: str = Field(description="Relative path inside the project.")


class ListFilesArgs(BaseModel):
    """No arguments: every file written so far is listed."""


class _WorkspaceTool(BaseTool):
    _workspace: Workspace = PrivateAttr()

    def bind(self, workspace: Workspace) -> Self:
        """Point the tool at a workspace (pydantic builds tools from fields alone)."""
        self._workspace = workspace
        return self


class WriteFileTool(_WorkspaceTool):
    name: str = "write_file"
    description: str = (
        "Write a whole file into the project at a relative path, replacing any earlier "
        "version. Paths outside the project, and secrets, are refused or redacted."
    )
    args_schema: type[BaseModel] = WriteFileArgs

    def _run(self, path: str, content: str) -> str:
        try:
            written = self._workspace.write(path, content)
        except WriteRefusedError as exc:
            return f"Not written: {exc}"
        if not written.changed:
            return f"{written.path} already had exactly this content."
        redacted = f"; {len(written.findings)} secret(s) redacted" if written.findings else ""
        return f"Wrote {written.path} ({written.size_bytes} bytes{redacted})."


class ReadFileTool(_WorkspaceTool):
    name: str = "read_file"
    description: str = "Read a file of the project by its relative path."
    args_schema: type[BaseModel] = ReadFileArgs

    def _run(self, path: str) -> str:
        try:
            return self._workspace.read(path)
        except WriteRefusedError as exc:
            return f"Cannot read {path!r}: {exc}"


class ListFilesTool(_WorkspaceTool):
    name: str = "list_files"
    description: str = "List the relative paths of every file in the project so far."
    args_schema: type[BaseModel] = ListFilesArgs

    def _run(self) -> str:
        files = self._workspace.files()
        if not files:
            return "The project has no files yet."
        shown = "\n".join(files[:MAX_LISTED])
        more = f"\n... and {len(files) - MAX_LISTED} more" if len(files) > MAX_LISTED else ""
        return shown + more


def workspace_tools(workspace: Workspace) -> list[BaseTool]:
    """The three file tools, bound to one workspace (a task's staging area)."""
    return [tool.bind(workspace) for tool in (WriteFileTool(), ReadFileTool(), ListFilesTool())]
