"""The speculative-decoding flags: SGLang's defaults and constraints, errors naming the flags,
the track-interval rule with extra_buffer, and the CLI's refusal while drafting is not built."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qnext.worker.config import CacheConfig, Config, ConfigError, ModelConfig, SpecConfig
from qnext.worker.tiny.presets import preset_config


def test_off_by_default_and_sizes_need_an_algorithm():
    assert not SpecConfig().enabled
    with pytest.raises(ConfigError, match="need --speculative-algorithm"):
        SpecConfig(num_steps=2)


def test_defaults_are_a_chain_of_three_steps():
    spec = SpecConfig("NEXTN")
    assert (spec.steps, spec.topk, spec.draft_tokens) == (3, 1, 4)
    assert SpecConfig("NEXTN", num_steps=5).draft_tokens == 6


@pytest.mark.parametrize("kwargs,named", [
    (dict(algorithm="MEDUSA"), "--speculative-algorithm"),
    (dict(algorithm="EAGLE"), "--speculative-draft-model-path"),
    (dict(algorithm="NEXTN", num_steps=0), "--speculative-num-steps"),
    (dict(algorithm="NEXTN", eagle_topk=-1), "--speculative-eagle-topk"),
    (dict(algorithm="NEXTN", num_steps=3, num_draft_tokens=5), r"num-steps \+ 1"),
    (dict(algorithm="NEXTN", num_steps=2, eagle_topk=2, num_draft_tokens=8), r"\[2, 7\]"),
    (dict(algorithm="NEXTN", eagle_topk=4, num_draft_tokens=1), "num-draft-tokens"),
])
def test_invalid_combinations_name_the_flag(kwargs, named):
    with pytest.raises(ConfigError, match=named):
        SpecConfig(**kwargs)


def test_trees_default_to_the_largest_tree():
    assert SpecConfig("NEXTN", num_steps=2, eagle_topk=2).draft_tokens == 1 + 2 + 4
    assert SpecConfig("EAGLE", "/draft", 5, 8, 64).draft_tokens == 64


def test_draft_tokens_fit_the_track_interval_with_extra_buffer():
    model = ModelConfig.from_hf(preset_config("tiny"))
    spec = SpecConfig("NEXTN", num_steps=2, eagle_topk=4)  # 1 + 4 + 16 = 21 draft tokens
    Config(model, cache=CacheConfig(mamba_scheduler_strategy="no_buffer",
                                    mamba_track_interval=16), spec=spec)
    with pytest.raises(ConfigError, match="--mamba-track-interval 16"):
        Config(model, cache=CacheConfig(mamba_scheduler_strategy="extra_buffer",
                                        mamba_track_interval=16), spec=spec)


def test_the_cli_refuses_speculation_until_drafting_exists():
    run = subprocess.run([sys.executable, "-m", "qnext.cli.main", "generate",
                          "--speculative-algorithm", "NEXTN"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "not available yet" in run.stderr
