"""`TextTokenizer`: a checkpoint's tokenizer.json (via `tokenizers`) plus its chat template.

Torch-free on purpose: `transformers.AutoTokenizer` would import torch into the front end.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from qnext_grpc.text.chat import ChatTemplate
from qnext_grpc.text.errors import TextError


class TextTokenizer:
    """Text <-> token ids for one checkpoint; encode adds no special tokens."""

    def __init__(self, tokenizer: Tokenizer, chat_template: ChatTemplate | None,
                 eos_token_ids: tuple[int, ...]):
        self._tokenizer = tokenizer
        self._chat_template = chat_template
        self.eos_token_ids = eos_token_ids
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_dir(cls, path: str | Path) -> TextTokenizer:
        """Load tokenizer.json, the chat template (chat_template.jinja or tokenizer_config.json)
        and the EOS ids (generation_config.json, config.json, tokenizer_config.json)."""
        root = Path(path)
        if not (root / "tokenizer.json").is_file():
            raise FileNotFoundError(f"no tokenizer.json in {root}")
        tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        config = _read_json(root / "tokenizer_config.json")
        special = {name: token for name in ("bos_token", "eos_token")
                   if (token := _token_text(config.get(name))) is not None}
        source = _template_source(root, config)
        template = ChatTemplate(source, special) if source is not None else None
        return cls(tokenizer, template, _eos_token_ids(root, tokenizer, special.get("eos_token")))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added (special-token text still matches).
        Through `encode_batch`, which (unlike `encode`) releases the GIL while it works: a long
        text tokenized on a thread leaves the event loop free."""
        return self._tokenizer.encode_batch([text], add_special_tokens=False)[0].ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`; ids outside the vocabulary are skipped."""
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: object, add_generation_prompt: bool = True,
                            **template_kwargs: Any) -> str:
        """Prompt text of `messages` (list of {role, content}); raises TextError when they are
        malformed or the checkpoint has no chat template."""
        if self._chat_template is None:
            raise TextError("this model has no chat template; send a raw prompt instead")
        return self._chat_template.render(messages, add_generation_prompt, **template_kwargs)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _token_text(token: object) -> str | None:
    """tokenizer_config.json writes a token as a string or as {"content": ...}."""
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else None


def _template_source(root: Path, config: dict[str, Any]) -> str | None:
    """chat_template.jinja wins; else tokenizer_config's string, or the "default" named one."""
    if (root / "chat_template.jinja").is_file():
        return (root / "chat_template.jinja").read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def _eos_token_ids(root: Path, tokenizer: Tokenizer, eos_token: str | None) -> tuple[int, ...]:
    """Ordered, de-duplicated EOS ids: generation_config.json, config.json, then the
    tokenizer's own eos_token."""
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        value = _read_json(root / name).get("eos_token_id")
        ids += [value] if isinstance(value, int) else list(value or [])
    if eos_token is not None and (token_id := tokenizer.token_to_id(eos_token)) is not None:
        ids.append(token_id)
    return tuple(dict.fromkeys(ids))
