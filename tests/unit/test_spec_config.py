"""The speculative-decoding flags: SGLang's defaults and constraints, errors naming the flags,
clear refusals of what the engine cannot run yet, and the CLI generating with NEXTN."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qnext.worker.config import (
    CacheConfig,
    Config,
    ConfigError,
    ModelConfig,
    ParallelConfig,
    SpecConfig,
)
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


@pytest.mark.parametrize("spec,cache,tp,match", [
    (SpecConfig("NEXTN"), CacheConfig(page_size=4, disable_radix_cache=True), 1,
     "--page-size 1"),
    (SpecConfig("NEXTN"), CacheConfig(page_size=16), 1, "extra_buffer"),
])
def test_what_the_engine_cannot_run_yet_is_refused(spec, cache, tp, match):
    model = ModelConfig.from_hf(preset_config("tiny"))
    with pytest.raises(ConfigError, match=match):
        Config(model, cache=cache, parallel=ParallelConfig(tp_size=tp), spec=spec)
    for ok in (SpecConfig("NEXTN"), SpecConfig("NEXTN", num_steps=2, eagle_topk=4)):
        Config(model, cache=CacheConfig(mamba_scheduler_strategy="no_buffer"), spec=ok)


def test_the_cli_speculates_with_the_mtp_head():
    run = subprocess.run([sys.executable, "-m", "qnext.cli.main", "generate", "--prompt",
                          "hello", "--max-new-tokens", "6", "--speculative-algorithm",
                          "NEXTN"], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    bad = subprocess.run([sys.executable, "-m", "qnext.cli.main", "generate",
                          "--speculative-algorithm", "NEXTN", "--page-size", "16"],
                         capture_output=True, text=True, timeout=180)
    assert bad.returncode == 2 and "extra_buffer" in bad.stderr
