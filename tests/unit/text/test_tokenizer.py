"""TextTokenizer on the tiny checkpoint: round-trips, EOS ids, chat template, bad messages."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from qnext_grpc.text import TextError, TextTokenizer

TORCH_FREE_CHECK = "import qnext_grpc.text, sys; assert 'torch' not in sys.modules"
TEXT = "héllo 世界 🙂 done"


def test_import_stays_torch_free():
    subprocess.run([sys.executable, "-c", TORCH_FREE_CHECK], check=True)


def test_encode_decode_round_trip(text_tokenizer):
    ids = text_tokenizer.encode(TEXT)
    assert text_tokenizer.decode(ids) == TEXT
    assert all(0 <= i < text_tokenizer.vocab_size for i in ids)


def test_encode_adds_no_special_tokens(text_tokenizer):
    assert text_tokenizer.encode("") == []
    assert text_tokenizer.encode("<|im_end|>") == [381]


def test_decode_skips_special_tokens_unless_asked(text_tokenizer):
    ids = text_tokenizer.encode("hi<|im_end|>")
    assert text_tokenizer.decode(ids) == "hi"
    assert text_tokenizer.decode(ids, skip_special_tokens=False) == "hi<|im_end|>"


def test_vocab_and_eos(text_tokenizer):
    assert text_tokenizer.vocab_size == 384
    assert text_tokenizer.eos_token_ids == (381, 379)


def test_chat_template_is_the_checkpoints(text_tokenizer):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": TEXT}]
    expected = f"<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n{TEXT}<|im_end|>\n"
    assert text_tokenizer.apply_chat_template(messages) == expected + "<|im_start|>assistant\n"
    assert text_tokenizer.apply_chat_template(messages, add_generation_prompt=False) == expected


@pytest.mark.parametrize("messages, needle", [
    ([], "empty"),
    ("hello", "list"),
    (None, "list"),
    ([["user", "hi"]], "object"),
    ([{"content": "hi"}], "role"),
    ([{"role": 3, "content": "hi"}], "role"),
    ([{"role": "wizard", "content": "hi"}], "unknown role 'wizard'"),
    ([{"role": "user"}], "content"),
    ([{"role": "user", "content": None}], "content"),
    ([{"role": "user", "content": "ok"}, {"role": "user", "content": 5}], "message 1"),
])
def test_malformed_messages_raise_text_error(text_tokenizer, messages, needle):
    with pytest.raises(TextError, match=needle):
        text_tokenizer.apply_chat_template(messages)


def test_text_error_is_a_value_error():
    assert issubclass(TextError, ValueError)


def _copy_without_template(source, target):
    out = shutil.copytree(source, target)
    config = json.loads((out / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def test_missing_template_raises_text_error(tiny_checkpoint, tmp_path):
    tok = TextTokenizer.from_dir(_copy_without_template(tiny_checkpoint("tiny"), tmp_path / "c"))
    with pytest.raises(TextError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


def test_chat_template_jinja_file_wins(tiny_checkpoint, tmp_path):
    out = _copy_without_template(tiny_checkpoint("tiny"), tmp_path / "c")
    (out / "chat_template.jinja").write_text("{{ messages | length }}|{{ eos_token }}")
    tok = TextTokenizer.from_dir(out)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "1|<|im_end|>"


def test_named_template_list_uses_default(tiny_checkpoint, tmp_path):
    out = _copy_without_template(tiny_checkpoint("tiny"), tmp_path / "c")
    config = json.loads((out / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "tool_use", "template": "T"},
                               {"name": "default", "template": "D"}]
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    assert TextTokenizer.from_dir(out).apply_chat_template(
        [{"role": "user", "content": "hi"}]) == "D"


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        TextTokenizer.from_dir(tmp_path)
