"""`OutputAssembler` with the tiny checkpoint's real tokenizer: streamed ids become text deltas
whose concatenation is the decoded text, cut before a stop string, with <think> text split out
as reasoning — however the ids are grouped into events."""

from __future__ import annotations

import pytest

from qnext_grpc.output import OutputAssembler
from qnext_grpc.text import TextTokenizer


@pytest.fixture(scope="module")
def tok(tiny_checkpoint):
    return TextTokenizer.from_dir(tiny_checkpoint("tiny"))


def run(asm: OutputAssembler, ids: list[int], group: int) -> tuple[str, str]:
    deltas = [asm.push(ids[i:i + group], []) for i in range(0, len(ids), group)]
    deltas.append(asm.finish())
    return "".join(d.text for d in deltas), "".join(d.reasoning for d in deltas)


@pytest.mark.parametrize("group", [1, 2, 5])
def test_text_stops_and_reasoning(tok, group):
    ids = tok.encode("<think>plan: añadir 🙂</think>The answer is 42. STOP here")
    text, reasoning = run(OutputAssembler(tok, [], ["STOP"], separate_reasoning=True), ids,
                          group)
    assert reasoning == "plan: añadir 🙂"
    assert text == "The answer is 42. "
    plain = OutputAssembler(tok, [], [])
    assert run(plain, ids, group) == (tok.decode(ids), "")
    assert plain.token_ids == ids and plain.matched_stop is None


def test_after_a_stop_only_ids_are_kept(tok):
    asm = OutputAssembler(tok, [], ["b"])
    first = asm.push(tok.encode("ab"), [])
    later = asm.push(tok.encode("cd"), [])
    assert first.text == "a" and later.text == "" and asm.matched_stop == "b"
    assert asm.token_ids == tok.encode("ab") + tok.encode("cd")
