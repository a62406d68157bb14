"""`StopMatcher`: cut streamed text before the first stop string, holding back partial matches.

"First" means first to complete while streaming (earliest end, then earliest start), so the
result does not depend on how the text was chunked. The stop string itself is not emitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from qnext_grpc.text.errors import TextError
from qnext_grpc.text.partial import partial_suffix_len

MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 256


class StopResult(NamedTuple):
    """Text safe to emit now, and the stop string that matched (None while streaming)."""

    text: str
    stop: str | None


def validate_stop_strings(stop_strings: Sequence[str]) -> tuple[str, ...]:
    """The stop strings as a tuple; TextError unless each is a non-empty string of at most
    MAX_STOP_STRING_CHARS and there are at most MAX_STOP_STRINGS."""
    if isinstance(stop_strings, str):
        raise TextError("stop strings must be a list of strings, not one string")
    stops = tuple(stop_strings)
    if len(stops) > MAX_STOP_STRINGS:
        raise TextError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
    for i, stop in enumerate(stops):
        if not isinstance(stop, str) or not stop:
            raise TextError(f"stop string {i} must be a non-empty string")
        if len(stop) > MAX_STOP_STRING_CHARS:
            raise TextError(f"stop string {i} has {len(stop)} characters; "
                            f"at most {MAX_STOP_STRING_CHARS}")
    return stops


class StopMatcher:
    """Feeds text chunks through; after a match (`stop` is set) further input is ignored."""

    def __init__(self, stop_strings: Sequence[str] = ()):
        self._stops = validate_stop_strings(stop_strings)
        self._held = ""
        self.stop: str | None = None

    def push(self, chunk: str) -> StopResult:
        """Emit what can no longer be part of a stop string; on a match, text before it."""
        if self.stop is not None:
            return StopResult("", None)
        text = self._held + chunk
        match = self._first_match(text)
        if match is not None:
            start, self.stop = match
            self._held = ""
            return StopResult(text[:start], self.stop)
        keep = partial_suffix_len(text, self._stops)
        self._held = text[len(text) - keep:]
        return StopResult(text[:len(text) - keep], None)

    def flush(self) -> str:
        """The held-back text, at the end of the stream ("" after a match)."""
        held, self._held = self._held, ""
        return held

    def _first_match(self, text: str) -> tuple[int, str] | None:
        """(start, stop) of the occurrence that ends first; ties go to the longer stop."""
        best: tuple[int, int, str] | None = None
        for stop in self._stops:
            start = text.find(stop)
            if start >= 0 and (best is None or (start + len(stop), start) < best[:2]):
                best = (start + len(stop), start, stop)
        return None if best is None else (best[1], best[2])
