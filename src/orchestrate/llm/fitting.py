"""Make a conversation fit a model's context window by shortening its longest message."""

from __future__ import annotations

from collections.abc import Callable

from orchestrate.llm.backend import ChatMessage

_MARKER = "\n[... {count} characters omitted to fit the context window ...]\n"
_MAX_ROUNDS = 12
_MAX_CUT_SHARE = 0.8


def fit_messages(
    messages: list[ChatMessage], count_tokens: Callable[[list[ChatMessage]], int], budget: int
) -> list[ChatMessage]:
    """Return messages whose token count is within ``budget``.

    The middle of the longest message is cut, keeping its start (the instructions) and
    its end (usually the request), until the whole fits.
    """
    fitted = [dict(message) for message in messages]
    for _ in range(_MAX_ROUNDS):
        used = count_tokens(fitted)
        if used <= budget:
            return fitted
        longest = max(fitted, key=lambda message: len(message["content"]))
        text = longest["content"]
        # Cut a share of characters a little above the share of tokens that is over, but
        # never the whole message in one round: its start and end are what matter most.
        share = min(_MAX_CUT_SHARE, (used - budget) / max(used, 1) * 1.2)
        excess_chars = int(len(text) * share) + 64
        keep = max(len(text) - excess_chars, 0)
        head, tail = text[: keep // 2], text[len(text) - keep // 2 :]
        longest["content"] = head + _MARKER.format(count=len(text) - len(head) - len(tail)) + tail
    return fitted
