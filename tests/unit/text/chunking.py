"""Hypothesis helper: cut a string or list at random points, for chunk-independence tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from hypothesis import strategies as st

T = TypeVar("T", str, list)


def random_chunks(data: st.DataObject, whole: T) -> list[T]:
    """`whole` cut at drawn positions (empty chunks allowed); the pieces concatenate back."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(whole)), max_size=8)))
    bounds: Sequence[int] = [0, *cuts, len(whole)]
    return [whole[a:b] for a, b in zip(bounds, bounds[1:])]
