"""`IncrementalDetokenizer`: streamed token ids -> newly finalised text, never half a character.

Byte-level BPE can split one UTF-8 character across tokens; such a tail decodes to U+FFFD, so
text ending in U+FFFD is held back until a later token completes it (or `flush`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

REPLACEMENT = "\ufffd"
#: prompt tokens kept as left context, for decoders whose output depends on what precedes.
PROMPT_CONTEXT_TOKENS = 5


class Decoder(Protocol):
    """What the detokenizer needs of a tokenizer (`TextTokenizer` fits)."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    """Decodes one sequence's output ids as they arrive.

    The text of all `push` results plus `flush` equals `tokenizer.decode(output_ids)` whenever
    the prompt ends on a character boundary. Only `ids[prefix_offset:]` is decoded per push.
    """

    def __init__(self, tokenizer: Decoder, prompt_ids: Sequence[int] = (),
                 skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        # NOTE: ids[prefix_offset:read_offset] is already emitted (or prompt context);
        # ids[read_offset:] is pending. Both offsets sit on character boundaries.
        self._ids = self._prompt_context(prompt_ids)
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def push(self, token_ids: Iterable[int]) -> str:
        """Append `token_ids`; the text they finalise (may be empty)."""
        self._ids.extend(token_ids)
        prefix_text, text = self._window_texts()
        if len(text) <= len(prefix_text) or text.endswith(REPLACEMENT):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return text[len(prefix_text):]

    def flush(self) -> str:
        """The held-back text (a trailing incomplete character decodes as U+FFFD)."""
        prefix_text, text = self._window_texts()
        self._prefix_offset = self._read_offset = len(self._ids)
        return text[len(prefix_text):]

    def _window_texts(self) -> tuple[str, str]:
        """(text of the emitted window, text of the emitted window plus pending ids)."""
        window = self._ids[self._prefix_offset:]
        emitted = self._read_offset - self._prefix_offset
        return self._decode(window[:emitted]), self._decode(window)

    def _prompt_context(self, prompt_ids: Sequence[int]) -> list[int]:
        """The prompt's last ids, or none when they end inside a character."""
        context = list(prompt_ids[len(prompt_ids) - PROMPT_CONTEXT_TOKENS:]
                       if len(prompt_ids) > PROMPT_CONTEXT_TOKENS else prompt_ids)
        return [] if self._decode(context).endswith(REPLACEMENT) else context

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special_tokens)
