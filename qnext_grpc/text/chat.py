"""Chat messages -> prompt text through the checkpoint's own Jinja chat template (jinja2,
sandboxed).

Validates messages first so a malformed request fails with a `TextError`, not a template crash.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from qnext_grpc.text.errors import TextError

ROLES = frozenset({"system", "user", "assistant", "tool"})


def validate_messages(messages: object) -> list[dict[str, Any]]:
    """Plain-dict copies of `messages`; raises TextError unless it is a non-empty list of
    mappings whose `role` is one of ROLES and whose `content` is a string."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TextError("chat messages must be a list of {role, content} objects")
    if not messages:
        raise TextError("chat messages must not be empty")
    return [_validate_message(i, m) for i, m in enumerate(messages)]


def _validate_message(index: int, message: object) -> dict[str, Any]:
    if not isinstance(message, Mapping):
        raise TextError(f"message {index}: expected an object with role and content")
    role, content = message.get("role"), message.get("content")
    if not isinstance(role, str):
        raise TextError(f"message {index}: missing or non-string role")
    if role not in ROLES:
        raise TextError(f"message {index}: unknown role {_short(role)} (expected one of "
                        f"{', '.join(sorted(ROLES))})")
    if not isinstance(content, str):
        raise TextError(f"message {index}: missing or non-string content")
    return dict(message)


def _short(text: str, limit: int = 40) -> str:
    """repr(text), cut to `limit` characters: errors travel in gRPC trailers (8 KiB)."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."


class ChatTemplate:
    """A compiled chat template; `render` fills it with validated messages."""

    def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None):
        self._template = _environment().from_string(source)
        self._special_tokens = dict(special_tokens or {})

    def render(self, messages: object, add_generation_prompt: bool = True,
               **template_kwargs: Any) -> str:
        """Prompt text for `messages`; extra kwargs (tools, enable_thinking, ...) reach the
        template. Raises TextError for malformed messages or a template's raise_exception."""
        checked = validate_messages(messages)
        context = {**self._special_tokens, **template_kwargs,
                   "messages": checked, "add_generation_prompt": add_generation_prompt}
        try:
            return self._template.render(**context)
        except jinja2.TemplateError as exc:
            raise TextError(f"chat template rejected the messages: {exc}") from exc


def _environment() -> ImmutableSandboxedEnvironment:
    """The environment HF chat templates are written for: trimmed blocks, loop controls,
    `tojson` keeping non-ASCII, `raise_exception` and `strftime_now`."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, separators=separators,
                      sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)
