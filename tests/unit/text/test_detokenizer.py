"""IncrementalDetokenizer: pushes + flush == decode(all ids), and no half characters emitted."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from qnext_grpc.text import IncrementalDetokenizer
from tests.unit.text.chunking import random_chunks

TEXTS = ["héllo 世界 🙂", "naïve café", "日本語のテキスト", "🙂🙃 emoji", "plain ascii"]
PROMPT = "<|im_start|>user\nhéllo 世界 🙂<|im_end|>\n<|im_start|>assistant\n"


def _stream(tok, ids, prompt_ids=(), per_push=1):
    detok = IncrementalDetokenizer(tok, prompt_ids)
    pieces = [detok.push(ids[i:i + per_push]) for i in range(0, len(ids), per_push)]
    return pieces, detok.flush()


def test_multibyte_text_streams_whole_characters(text_tokenizer):
    for text in TEXTS:
        ids = text_tokenizer.encode(text)
        pieces, tail = _stream(text_tokenizer, ids, text_tokenizer.encode(PROMPT))
        assert "".join(pieces) + tail == text
        assert tail == "" and not any("\ufffd" in p for p in pieces)


def test_split_character_is_held_back(text_tokenizer):
    ids = text_tokenizer.encode("世")
    assert len(ids) > 1  # the tiny BPE splits this character across tokens
    detok = IncrementalDetokenizer(text_tokenizer)
    assert [detok.push([i]) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert detok.push(ids[-1:]) == "世"


def test_incomplete_tail_comes_out_on_flush(text_tokenizer):
    ids = text_tokenizer.encode("a世")[:-1]
    pieces, tail = _stream(text_tokenizer, ids)
    assert "".join(pieces) == "a" and tail == text_tokenizer.decode(ids)[1:]


def test_prompt_ending_inside_a_character_is_ignored(text_tokenizer):
    prompt = text_tokenizer.encode("x世")[:-1]
    ids = text_tokenizer.encode(" ok")
    pieces, tail = _stream(text_tokenizer, ids, prompt)
    assert "".join(pieces) + tail == " ok"


def test_special_tokens_are_skipped(text_tokenizer):
    ids = text_tokenizer.encode("<think>hi</think>ok<|im_end|>")
    pieces, tail = _stream(text_tokenizer, ids)
    assert "".join(pieces) + tail == "<think>hi</think>ok"


@st.composite
def token_ids(draw, multibyte_ids):
    """Random ids over the whole vocabulary, mixed with pieces of multi-byte characters."""
    return draw(st.lists(st.one_of(st.integers(0, 383), st.sampled_from(multibyte_ids)),
                         max_size=40))


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_random_ids_concatenate_to_decode(text_tokenizer, data):
    multibyte = sorted({i for t in TEXTS for i in text_tokenizer.encode(t)})
    ids = data.draw(token_ids(multibyte))
    prompt = data.draw(st.sampled_from(["", PROMPT, "héllo 世界 🙂"]))
    detok = IncrementalDetokenizer(text_tokenizer, text_tokenizer.encode(prompt))
    pieces = [detok.push(chunk) for chunk in random_chunks(data, ids)]
    assert "".join(pieces) + detok.flush() == text_tokenizer.decode(ids)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=30), data=st.data())
def test_valid_text_never_emits_replacement(text_tokenizer, text, data):
    ids = text_tokenizer.encode(text.replace("\ufffd", ""))
    detok = IncrementalDetokenizer(text_tokenizer)
    pieces = [detok.push(chunk) for chunk in random_chunks(data, ids)]
    assert not any("\ufffd" in p for p in pieces)
    assert "".join(pieces) + detok.flush() == text_tokenizer.decode(ids)
