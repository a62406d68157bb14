"""`ReasoningSplitter`: streamed text -> (reasoning, content) deltas around one <think> block.

One block only, as Qwen3 emits it: text before the start tag and after the end tag is content,
and tags after the block stay literal content. Tags split across chunks are held back.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

from qnext_grpc.text.errors import TextError
from qnext_grpc.text.partial import partial_suffix_len


class Split(NamedTuple):
    """One step's new reasoning text and new content text (either may be empty)."""

    reasoning: str
    content: str


class _Phase(Enum):
    BEFORE = "before"  # awaiting the start tag
    REASONING = "reasoning"  # awaiting the end tag
    AFTER = "after"  # block closed: all content


class ReasoningSplitter:
    """Splits one sequence's streamed output; tags themselves are dropped.

    `starts_in_reasoning=True` is for templates that already opened the block in the prompt
    (Qwen3 Thinking): the output is reasoning until the end tag.
    """

    def __init__(self, start: str = "<think>", end: str = "</think>",
                 starts_in_reasoning: bool = False):
        if not start or not end:
            raise TextError("reasoning start and end tags must be non-empty")
        self._start, self._end = start, end
        self._phase = _Phase.REASONING if starts_in_reasoning else _Phase.BEFORE
        self._held = ""

    @property
    def in_reasoning(self) -> bool:
        """Whether the text pushed so far ends inside the reasoning block."""
        return self._phase is _Phase.REASONING

    def push(self, chunk: str) -> Split:
        """The reasoning and content that `chunk` finalises."""
        text, reasoning, content = self._held + chunk, [], []
        while (tag := self._awaited_tag()) is not None and (index := text.find(tag)) >= 0:
            self._route(text[:index], reasoning, content)
            text = text[index + len(tag):]
            self._phase = _Phase.REASONING if self._phase is _Phase.BEFORE else _Phase.AFTER
        keep = partial_suffix_len(text, (tag,)) if tag is not None else 0
        self._route(text[:len(text) - keep], reasoning, content)
        self._held = text[len(text) - keep:]
        return Split("".join(reasoning), "".join(content))

    def flush(self) -> Split:
        """The held-back text (a partial tag), in the current phase."""
        reasoning: list[str] = []
        content: list[str] = []
        self._route(self._held, reasoning, content)
        self._held = ""
        return Split("".join(reasoning), "".join(content))

    def _awaited_tag(self) -> str | None:
        return {_Phase.BEFORE: self._start, _Phase.REASONING: self._end}.get(self._phase)

    def _route(self, text: str, reasoning: list[str], content: list[str]) -> None:
        (reasoning if self._phase is _Phase.REASONING else content).append(text)
