"""`OutputAssembler`: turns one request's streamed token ids into text deltas — incremental
detokenizing, stop strings (the text ends before the first completed one), and the optional
reasoning split — and keeps what the final message needs. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field

from qnext_grpc.text import IncrementalDetokenizer, ReasoningSplitter, StopMatcher, TextTokenizer


@dataclass
class Delta:
    """New output of one worker event."""

    text: str = ""
    reasoning: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list = field(default_factory=list)  # TokenLogprob messages, when asked for


class OutputAssembler:
    def __init__(self, tokenizer: TextTokenizer, prompt_ids: list[int], stops: list[str],
                 skip_special_tokens: bool = True, separate_reasoning: bool = False) -> None:
        self._detok = IncrementalDetokenizer(tokenizer, prompt_ids, skip_special_tokens)
        self._stops = StopMatcher(stops)
        self._reasoning = ReasoningSplitter() if separate_reasoning else None
        self.token_ids: list[int] = []
        self.text: list[str] = []
        self.reasoning: list[str] = []

    @property
    def matched_stop(self) -> str | None:
        """The stop string that ended the text, if one did."""
        return self._stops.stop

    def push(self, token_ids: list[int], logprobs: list) -> Delta:
        """Tokens of one event; once a stop string matched, only the ids are kept."""
        self.token_ids += token_ids
        stopped = self._stops.stop is not None
        text = "" if stopped else self._stops.push(self._detok.push(token_ids)).text
        return self._delta(text, token_ids, logprobs)

    def finish(self) -> Delta:
        """Everything held back (partial characters, stop-string prefixes, open tags)."""
        text = ""
        if self._stops.stop is None:
            text = self._stops.push(self._detok.flush()).text
            text += self._stops.flush()
        delta = self._delta(text, [], [])
        if self._reasoning is not None:
            rest = self._reasoning.flush()
            delta.reasoning += rest.reasoning
            delta.text += rest.content
            self.reasoning.append(rest.reasoning)
            self.text.append(rest.content)
        return delta

    def _delta(self, text: str, token_ids: list[int], logprobs: list) -> Delta:
        if self._reasoning is None:
            reasoning, content = "", text
        else:
            reasoning, content = self._reasoning.push(text)
        self.text.append(content)
        self.reasoning.append(reasoning)
        return Delta(content, reasoning, list(token_ids), list(logprobs))
