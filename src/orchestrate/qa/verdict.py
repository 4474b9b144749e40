"""Read the critic's answer as a structured verdict: approve, or changes to make.

The critic is asked to end with ``VERDICT: APPROVE`` or ``VERDICT: REQUEST CHANGES``
followed by the changes as a list. Small models drift from that, so the reading is
lenient: the last verdict line wins, and the changes are the list items after it, or
failing that every list item of the review.
"""

from __future__ import annotations

import re

from orchestrate.qa.records import Verdict

_VERDICT = re.compile(
    r"verdict\W{0,6}(approve[sd]?|request[\s_-]*changes|reject(?:ed)?)", re.IGNORECASE
)
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d{1,3}[.)])\s+(?P<item>\S.*?)\s*$")
_MAX_CHANGES = 20


def parse_verdict(answer: str) -> Verdict | None:
    """The verdict the answer ends with, or None when it gives none."""
    matches = list(_VERDICT.finditer(answer))
    if not matches:
        return None
    last = matches[-1]
    if last.group(1).lower().startswith("approve"):
        return Verdict(decision="approve")
    changes = _list_items(answer[last.end() :]) or _list_items(answer[: last.start()])
    return Verdict(decision="request_changes", changes=changes[:_MAX_CHANGES])


def _list_items(text: str) -> list[str]:
    items = []
    for line in text.splitlines():
        match = _LIST_ITEM.match(line)
        if match:
            items.append(match.group("item").strip("*_ "))
    return [item for item in items if item]
