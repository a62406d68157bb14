"""ChatTemplate: the Jinja features HF chat templates use, and template errors as TextError."""

from __future__ import annotations

import pytest

from qnext_grpc.text import ChatTemplate, TextError, validate_messages

USER = [{"role": "user", "content": "héllo"}]

# Exercises namespace, loop controls, tojson, raise_exception and extra kwargs like Qwen3's.
QWEN_LIKE = (
    "{%- set ns = namespace(last_user=-1) %}\n"
    "{%- for m in messages %}\n"
    "  {%- if m.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if ns.last_user < 0 %}{{ raise_exception('No user query found.') }}{%- endif %}\n"
    "{%- if tools %}<tools>{{ tools | tojson }}</tools>{%- endif %}\n"
    "{%- for m in messages %}\n"
    "  {%- if m.role == 'system' %}{% continue %}{% endif %}\n"
    "[{{ m.role }}]{{ m.content }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}[assistant]\n"
    "  {%- if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}\n"
    "{%- endif %}"
)


def test_qwen_like_template_renders():
    template = ChatTemplate(QWEN_LIKE)
    messages = [{"role": "system", "content": "s"}, *USER]
    out = template.render(messages, tools=[{"name": "météo"}], enable_thinking=False)
    assert out == '<tools>[{"name": "météo"}]</tools>[user]héllo[assistant]<think></think>'


def test_raise_exception_becomes_text_error():
    with pytest.raises(TextError, match="No user query found"):
        ChatTemplate(QWEN_LIKE).render([{"role": "system", "content": "s"}])


def test_special_tokens_and_generation_prompt_flag():
    template = ChatTemplate("{{ bos_token }}{{ add_generation_prompt }}", {"bos_token": "<s>"})
    assert template.render(USER) == "<s>True"
    assert template.render(USER, add_generation_prompt=False) == "<s>False"


def test_sandbox_blocks_unsafe_attributes():
    with pytest.raises(TextError):
        ChatTemplate("{{ messages.__class__.__mro__ }}").render(USER)


def test_validate_messages_copies_and_keeps_extra_keys():
    messages = [{"role": "assistant", "content": "", "reasoning_content": "r"}]
    checked = validate_messages(messages)
    assert checked == messages and checked[0] is not messages[0]
