"""ReasoningSplitter: one <think> block split out of streamed text, for any chunking."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qnext_grpc.text import ReasoningSplitter, TextError
from tests.unit.text.chunking import random_chunks

START, END = "<think>", "</think>"


def _run(chunks, starts_in_reasoning=False):
    splitter = ReasoningSplitter(starts_in_reasoning=starts_in_reasoning)
    splits = [splitter.push(c) for c in chunks] + [splitter.flush()]
    return "".join(s.reasoning for s in splits), "".join(s.content for s in splits)


def _expected(text, starts_in_reasoning):
    """Oracle: (reasoning, content) of the first block, by plain `find`."""
    if not starts_in_reasoning:
        start = text.find(START)
        if start < 0:
            return "", text
        before, text = text[:start], text[start + len(START):]
    else:
        before = ""
    end = text.find(END)
    if end < 0:
        return text, before
    return text[:end], before + text[end + len(END):]


def test_qwen3_output_with_tags_split_across_chunks():
    chunks = ["<th", "ink>\nplan", " it\n</", "think>\n\nAnswer <", "think> stays"]
    assert _run(chunks) == ("\nplan it\n", "\n\nAnswer <think> stays")


def test_starts_in_reasoning_for_thinking_templates():
    assert _run(["step 1</thi", "nk>done"], starts_in_reasoning=True) == ("step 1", "done")


def test_no_tags_is_all_content():
    assert _run(["just ", "an answer <"]) == ("", "just an answer <")


def test_unclosed_block_is_all_reasoning():
    splitter = ReasoningSplitter()
    assert splitter.push("<think>abc</th") == ("abc", "")
    assert splitter.in_reasoning
    assert splitter.flush() == ("</th", "")


def test_one_chunk_holds_a_whole_block():
    splitter = ReasoningSplitter()
    assert splitter.push("pre<think>r</think>post") == ("r", "prepost")
    assert not splitter.in_reasoning


def test_custom_tags_and_validation():
    splitter = ReasoningSplitter("[[", "]]")
    assert splitter.push("[[a]]b") == ("a", "b")
    with pytest.raises(TextError):
        ReasoningSplitter("", "]]")


PIECES = st.sampled_from([START, END, "<", "</", "<th", "think>", "a", "é", "\n", " b"])


@given(pieces=st.lists(PIECES, max_size=15), starts=st.booleans(), data=st.data())
def test_random_chunking_matches_oracle(pieces, starts, data):
    text = "".join(pieces)
    assert _run(random_chunks(data, text), starts) == _expected(text, starts)
