"""Held-back suffixes: how much of a streamed text's end could still begin a pattern."""

from __future__ import annotations

from collections.abc import Iterable


def partial_suffix_len(text: str, patterns: Iterable[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some pattern.

    Streaming code holds that many trailing characters back: the next chunk may complete a
    pattern that starts there. 0 when no suffix can begin a pattern.
    """
    longest = 0
    for pattern in patterns:
        longest = max(longest, _partial_len(text, pattern))
    return longest


def _partial_len(text: str, pattern: str) -> int:
    """Longest k < len(pattern) with text ending in pattern[:k]."""
    first = max(0, len(text) - len(pattern) + 1)
    for start in range(first, len(text)):
        if text.startswith(pattern[:len(text) - start], start):
            return len(text) - start
    return 0
