"""StopMatcher: emitted text == text before the first completed stop string, for any chunking."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qnext_grpc.text import StopMatcher, TextError
from tests.unit.text.chunking import random_chunks


def _run(stops, chunks):
    matcher = StopMatcher(stops)
    results = [matcher.push(c) for c in chunks]
    matched = [r.stop for r in results if r.stop is not None]
    return "".join(r.text for r in results) + matcher.flush(), matched


def _expected(stops, text):
    """Oracle: the stop whose first occurrence ends first (ties: the longer one)."""
    found = [(text.find(s) + len(s), text.find(s), s) for s in stops if s in text]
    if not found:
        return text, []
    _, start, stop = min(found)
    return text[:start], [stop]


def test_no_stops_passes_through():
    assert StopMatcher().push("abc") == ("abc", None)


def test_partial_match_is_held_then_released():
    matcher = StopMatcher(["</end>"])
    assert matcher.push("ok </e") == ("ok ", None)
    assert matcher.push("x") == ("</ex", None)
    assert matcher.push("</en") == ("", None)
    assert matcher.flush() == "</en"


def test_match_across_chunks_truncates_and_ignores_the_rest():
    matcher = StopMatcher(["STOP"])
    assert matcher.push("hello ST") == ("hello ", None)
    assert matcher.push("OP world") == ("", "STOP")
    assert matcher.stop == "STOP"
    assert matcher.push("more") == ("", None) and matcher.flush() == ""


def test_first_completed_stop_wins():
    assert _run(["abc", "b"], ["abc"]) == ("a", ["b"])
    assert _run(["bc", "abc"], ["xabcd"]) == ("x", ["abc"])


@pytest.mark.parametrize("stops, needle", [
    ("stop", "list"),
    ([""], "non-empty"),
    ([None], "non-empty"),
    (["x" * 257], "257"),
    ([str(i) for i in range(17)], "at most 16"),
])
def test_invalid_stop_strings(stops, needle):
    with pytest.raises(TextError, match=needle):
        StopMatcher(stops)


def test_limits_are_inclusive():
    StopMatcher(["x" * 256] + [str(i) for i in range(15)])


@given(stops=st.lists(st.text("abc", min_size=1, max_size=4), max_size=4),
       text=st.text("abcd", max_size=40), data=st.data())
def test_random_chunking_matches_oracle(stops, text, data):
    assert _run(stops, random_chunks(data, text)) == _expected(stops, text)


@given(stops=st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=3),
       text=st.text(max_size=30), data=st.data())
def test_random_unicode_matches_oracle(stops, text, data):
    text = data.draw(st.sampled_from([text, text + stops[0] + text]))
    assert _run(stops, random_chunks(data, text)) == _expected(stops, text)
