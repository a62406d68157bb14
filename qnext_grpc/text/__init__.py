"""The front end's text layer: tokenizer and chat template, incremental detokenizing, stop
strings and reasoning split. Never imports torch (the front-end process is torch-free)."""

from qnext_grpc.text.chat import ROLES, ChatTemplate, validate_messages
from qnext_grpc.text.detokenizer import IncrementalDetokenizer
from qnext_grpc.text.errors import TextError
from qnext_grpc.text.reasoning import ReasoningSplitter, Split
from qnext_grpc.text.stops import (
    MAX_STOP_STRING_CHARS, MAX_STOP_STRINGS, StopMatcher, StopResult, validate_stop_strings)
from qnext_grpc.text.tokenizer import TextTokenizer

__all__ = [
    "MAX_STOP_STRINGS", "MAX_STOP_STRING_CHARS", "ROLES", "ChatTemplate",
    "IncrementalDetokenizer", "ReasoningSplitter", "Split", "StopMatcher", "StopResult",
    "TextError", "TextTokenizer", "validate_messages", "validate_stop_strings",
]
