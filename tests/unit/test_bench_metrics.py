"""`qnext bench` arithmetic and workloads: vLLM's metric definitions on hand-built records,
percentiles against numpy, arrival gaps, and the synthetic datasets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qnext.cli.bench_load import arrival_gaps, random_ids, shared_prefix
from qnext.cli.bench_metrics import RequestRecord, format_table, percentile, summarize


@pytest.mark.parametrize("p", [0, 1, 50, 90, 99, 100])
def test_percentile_matches_numpy(p):
    values = [0.3, 5.0, 1.25, 9.5, 2.0, 2.0, 7.75]
    assert percentile(values, p) == pytest.approx(np.percentile(values, p))


def test_summarize_uses_vllm_definitions():
    records = [RequestRecord(prompt_len=10, output_len=5, ttft=0.1, e2e=0.5,
                             itl=[0.1, 0.1, 0.1, 0.1]),
               RequestRecord(prompt_len=20, output_len=1, ttft=0.2, e2e=0.2),
               RequestRecord(prompt_len=30, error="UNAVAILABLE")]
    result = summarize(records, duration=2.0, percentiles=(50, 99))
    assert (result["completed"], result["failed"]) == (2, 1)
    assert result["errors"] == {"UNAVAILABLE": 1}
    assert (result["total_input_tokens"], result["total_output_tokens"]) == (30, 6)
    assert result["request_throughput"] == pytest.approx(1.0)
    assert result["output_throughput"] == pytest.approx(3.0)
    assert result["total_token_throughput"] == pytest.approx(18.0)
    # TPOT only from requests with > 1 output token: (0.5 - 0.1) / 4
    assert result["mean_tpot_ms"] == pytest.approx(100.0)
    assert result["mean_ttft_ms"] == pytest.approx(150.0)
    assert result["median_itl_ms"] == pytest.approx(100.0)
    assert result["p99_e2el_ms"] == pytest.approx(np.percentile([500.0, 200.0], 99))
    table = format_table(result, (50, 99))
    assert "Successful requests:" in table and "P99 ITL (ms):" in table


def test_summarize_with_nothing_completed_is_all_zero():
    result = summarize([RequestRecord(prompt_len=3, error="DEADLINE_EXCEEDED")], 1.0)
    assert result["completed"] == 0 and result["mean_ttft_ms"] == 0.0


def test_arrival_gaps_follow_the_rate():
    assert arrival_gaps(5, math.inf, 1.0, 0) == [0.0] * 5
    gaps = arrival_gaps(4000, 20.0, 1.0, 1)
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 20.0, rel=0.1)
    bursty = arrival_gaps(4000, 20.0, 0.25, 1)
    assert sum(bursty) / len(bursty) == pytest.approx(1 / 20.0, rel=0.15)
    assert np.std(bursty) > 1.5 * np.std(gaps)  # burstiness < 1: more variable


def test_random_ids_lengths_and_vocabulary():
    work = random_ids(50, 40, 9, 0.5, vocab_size=17, seed=3)
    assert len(work.prompts) == len(work.output_lens) == 50
    assert all(20 <= len(p) <= 40 for p in work.prompts)
    assert all(4 <= n <= 9 for n in work.output_lens)
    assert all(0 <= t < 17 for p in work.prompts for t in p)
    assert random_ids(50, 40, 9, 0.5, 17, 3) == work  # seeded
    fixed = random_ids(5, 8, 3, 1.0, 17, 0)
    assert {len(p) for p in fixed.prompts} == {8} and set(fixed.output_lens) == {3}


def test_shared_prefix_groups_share_their_prefix():
    work = shared_prefix(12, groups=3, prefix_len=16, input_len=5, output_len=2,
                         range_ratio=1.0, vocab_size=100, seed=0)
    heads = [tuple(p[:16]) for p in work.prompts]
    assert len(set(heads)) == 3
    assert heads[0] == heads[3] == heads[6] and heads[0] != heads[1]
    assert all(len(p) == 21 for p in work.prompts)
