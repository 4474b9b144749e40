"""Files shipped with orchestrate: the default crew and the example specs.

They live in the repository's top-level ``config/`` and ``examples/`` folders; a wheel
carries them inside the package as ``orchestrate/bundled/``.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_COPY = Path(__file__).parent / "bundled"
_SOURCE_CHECKOUT = Path(__file__).resolve().parents[2]


def bundled_path(relative: str) -> Path:
    """Locate a shipped file, in an installed wheel or in a source checkout."""
    for root in (_PACKAGE_COPY, _SOURCE_CHECKOUT):
        candidate = root / relative
        if candidate.exists():
            return candidate
    return _PACKAGE_COPY / relative


def default_crew_file() -> Path:
    return bundled_path("config/crew.yaml")
