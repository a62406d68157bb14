"""Fixtures for the text layer: the tiny checkpoint's TextTokenizer, loaded once."""

from __future__ import annotations

import pytest

from qnext_grpc.text import TextTokenizer


@pytest.fixture(scope="session")
def text_tokenizer(tiny_checkpoint) -> TextTokenizer:
    return TextTokenizer.from_dir(tiny_checkpoint("tiny"))
