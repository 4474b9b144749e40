"""Find secrets in generated files with detect-secrets, and redact them or refuse the file.

detect-secrets keeps its configuration in one process-wide object; it is set up once
(every plugin except public IP addresses, which are not secrets, and without the filters
that expect a file on disk) and only read afterwards, so threads may scan at once.
Each line goes through the plugins and the library's own false-positive filters, the
same steps its file scanner takes, without writing the content to disk first.

A finding records the kind of secret and its line, never the value.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from orchestrate.errors import SecretFoundError

logger = logging.getLogger(__name__)

REDACTED = "<redacted>"  # a template-looking value, which detect-secrets itself ignores
_SKIPPED_PLUGINS = ("IPPublicDetector",)
_FILE_FILTERS = (
    "detect_secrets.filters.common.is_invalid_file",  # the content is not on disk yet
    "detect_secrets.filters.heuristic.is_non_text_file",
)
_PRIVATE_KEY_BLOCK = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----"
    r".*?(-----END[A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----|\Z)",
    re.DOTALL,
)
_configured = threading.Event()
_configure_lock = threading.Lock()


class SecretMode(StrEnum):
    REDACT = "redact"  # replace each secret by REDACTED and write the rest
    REFUSE = "refuse"  # write nothing and report the file as refused


@dataclass(frozen=True)
class SecretFinding:
    """One secret found in a file: what kind, and on which line (1-based)."""

    kind: str
    line: int

    def as_event(self) -> dict[str, Any]:
        return {"kind": self.kind, "line": self.line}


@dataclass(frozen=True)
class _Match:
    finding: SecretFinding
    values: tuple[str, ...]  # the text to redact: the secret, or the whole pattern match


class SecretScanner:
    """Scans content before it is written; redacts or refuses what it finds."""

    def __init__(self, mode: SecretMode | str = SecretMode.REDACT) -> None:
        self.mode = SecretMode(mode)

    def check(self, path: str, content: str) -> tuple[str, tuple[SecretFinding, ...]]:
        """Return the content to write and what was found; raise SecretFoundError to refuse."""
        matches = scan(path, content)
        if not matches:
            return content, ()
        findings = tuple(match.finding for match in matches)
        if self.mode is SecretMode.REFUSE:
            raise SecretFoundError(
                f"'{path}' holds {describe_findings(findings)}; refused "
                f"(ORCHESTRATE_SECRET_MODE=refuse)",
                findings,
            )
        logger.info("redacted %s in %s", describe_findings(findings), path)
        return _redact(content, matches), findings


def find_secrets(path: str, content: str) -> list[SecretFinding]:
    """The secrets in ``content``, as kinds and lines."""
    return [match.finding for match in scan(path, content)]


def describe_findings(findings: tuple[SecretFinding, ...]) -> str:
    """'2 secrets (Secret Keyword on line 3, AWS Access Key on line 7)', without values."""
    where = ", ".join(f"{finding.kind} on line {finding.line}" for finding in findings[:5])
    more = f" and {len(findings) - 5} more" if len(findings) > 5 else ""
    noun = "secret" if len(findings) == 1 else "secrets"
    return f"{len(findings)} {noun} ({where}{more})"


def scan(path: str, content: str) -> list[_Match]:
    """Run detect-secrets' plugins and filters over every line of ``content``."""
    from detect_secrets.core.scan import get_filters_with_parameter
    from detect_secrets.settings import get_plugins
    from detect_secrets.util.code_snippet import get_code_snippet
    from detect_secrets.util.inject import call_function_with_arguments

    _configure()

    def filtered(*parameters: str, **values: Any) -> bool:
        for check in get_filters_with_parameter(*parameters):
            try:
                if call_function_with_arguments(check, **values):
                    return True
            except TypeError:  # a filter that needs a value we do not have
                continue
        return False

    lines = content.splitlines()
    found: dict[tuple[int, str], _Match] = {}
    for number, line in enumerate(lines, start=1):
        context = get_code_snippet(lines, number)
        if filtered("line", filename=path, line=line, context=context):
            continue
        for plugin in get_plugins():
            for secret in plugin.analyze_line(
                filename=path, line=line, line_number=number, context=context
            ):
                value = secret.secret_value or ""
                values = {"filename": path, "secret": value, "plugin": plugin, "line": line}
                if filtered("secret", **values) or filtered("context", context=context, **values):
                    continue
                finding = SecretFinding(secret.type, number)
                found.setdefault((number, value), _Match(finding, _spans(plugin, line, value)))
    return sorted(found.values(), key=lambda match: (match.finding.line, match.finding.kind))


def _spans(plugin: Any, line: str, value: str) -> tuple[str, ...]:
    """What to redact: a pattern plugin reports only its first group (``ghp`` of a token)."""
    whole = [
        match.group(0)
        for pattern in getattr(plugin, "denylist", ())
        for match in pattern.finditer(line)
        if value in match.group(0)
    ]
    return tuple(whole) if whole else (value,)


def _configure() -> None:
    """Enable detect-secrets' plugins once per process."""
    if _configured.is_set():
        return
    with _configure_lock:
        if _configured.is_set():
            return
        from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
        from detect_secrets.settings import get_settings

        classes: list[type] = list(get_mapping_from_secret_type_to_class().values())
        names = [cls.__name__ for cls in classes if cls.__name__ not in _SKIPPED_PLUGINS]
        settings = get_settings()
        settings.configure_plugins([{"name": name} for name in names])
        settings.disable_filters(*_FILE_FILTERS)
        _configured.set()


def _redact(content: str, matches: list[_Match]) -> str:
    # A private key's header is what the plugin matches; the key itself is the body below it,
    # so the whole block goes, after the other secrets (their line numbers still hold).
    lines = content.splitlines(keepends=True)
    for match in matches:
        if match.finding.kind == "Private Key":
            continue
        index = match.finding.line - 1
        for value in sorted(match.values, key=len, reverse=True):
            if value:
                lines[index] = lines[index].replace(value, REDACTED)
    return _PRIVATE_KEY_BLOCK.sub(f"-----{REDACTED} PRIVATE KEY-----", "".join(lines))
