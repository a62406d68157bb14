"""A deterministic byte-level BPE tokenizer for tiny checkpoints, trained on the built-in corpus.

Qwen layout: 379 learned tokens (256 bytes + merges), then the 5 added tokens at ids 379..383.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer

from qnext.worker.tiny.corpus import corpus_lines

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK = "<think>"
END_THINK = "</think>"
#: (text, special) in id order; special ones are skipped by decode(skip_special_tokens=True).
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    (ENDOFTEXT, True), (IM_START, True), (IM_END, True), (THINK, False), (END_THINK, False))

BPE_VOCAB_SIZE = 379
TOKENIZER_VOCAB_SIZE = BPE_VOCAB_SIZE + len(ADDED_TOKENS)  # 384
SPECIAL_TOKEN_IDS: dict[str, int] = {
    text: BPE_VOCAB_SIZE + i for i, (text, _) in enumerate(ADDED_TOKENS)}
ENDOFTEXT_ID = SPECIAL_TOKEN_IDS[ENDOFTEXT]  # 379
IM_START_ID = SPECIAL_TOKEN_IDS[IM_START]  # 380
IM_END_ID = SPECIAL_TOKEN_IDS[IM_END]  # 381
MODEL_MAX_LENGTH = 4096

# Qwen2's pre-tokenizer split: single digits, letter runs with one leading non-letter, etc.
_SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _empty_tokenizer() -> Tokenizer:
    """Byte-level BPE with Qwen's split regex, no normaliser (so any UTF-8 round-trips)."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def train_tokenizer() -> Tokenizer:
    """Train on `corpus_lines()`; deterministic (`tokenizers` breaks merge ties by pair ids)."""
    tok = _empty_tokenizer()
    trainer = BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE, min_frequency=2, show_progress=False, special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([line + "\n" for line in corpus_lines()], trainer=trainer)
    if tok.get_vocab_size() != BPE_VOCAB_SIZE:
        raise RuntimeError(f"corpus too small: BPE vocab {tok.get_vocab_size()} < {BPE_VOCAB_SIZE}")
    for text, special in ADDED_TOKENS:
        token = AddedToken(text, special=special, normalized=False, single_word=False,
                           lstrip=False, rstrip=False)
        if special:
            tok.add_special_tokens([token])
        else:
            tok.add_tokens([token])
    if tok.get_vocab_size() != TOKENIZER_VOCAB_SIZE:
        raise RuntimeError(f"tokenizer vocab {tok.get_vocab_size()} != {TOKENIZER_VOCAB_SIZE}")
    return tok


def tokenizer_config() -> dict:
    """The tokenizer_config.json contents (loads with `AutoTokenizer`, offline)."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "unk_token": None,
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "chat_template": CHAT_TEMPLATE,
    }


def build_tokenizer(path: str | Path) -> Path:
    """Write tokenizer.json and tokenizer_config.json into directory `path`; returns it."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer()
    (out / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out
