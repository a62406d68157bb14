"""Speculative decoding on the committed tiny checkpoint whose MTP head was trained
(`tests/data/tiny-mtp`, made by `scripts/train_tiny_mtp.py`): greedy outputs equal plain
decoding's, and the head's drafts are accepted far above a random head's level (~1 token
per verify, see `test_spec_engine.py`), so the head's weights, names and math reach the drafter
as trained.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from qnext.worker.engine import Engine
from qnext.worker.sched.request import SamplingParams
from qnext.worker.spec_config import SpecConfig
from tests.engine.helpers import assert_pools_at_baseline, engine_config

CHECKPOINT = Path(__file__).resolve().parents[1] / "data" / "tiny-mtp"
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=40, ignore_eos=True)
#: Python the model never saw (written for this test, not taken from the standard library).
SNIPPETS = (
    'def read_lines(path):\n    """Return the lines of a text file."""\n'
    "    with open(path) as f:\n",
    "class Counter:\n    def __init__(self, start=0):\n        self.value = start\n\n    def ",
    "import os\nimport sys\n\n\ndef main(argv=None):\n    if argv is None:\n        argv = sys.",
    "    for key, value in sorted(items.items()):\n        if value is None:\n            raise",
)
#: Accept length (tokens per verify, bonus included) at least: measured 1.75 (1 step) and
#: 2.32 (3 steps) on these snippets (docs/perf/spec.md); a random head gets 1.0.
MIN_ACCEPT_LENGTH = {1: 1.4, 3: 1.8}


def _prompts() -> list[list[int]]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(CHECKPOINT / "tokenizer.json"))
    return [tokenizer.encode(text).ids for text in SNIPPETS]


def _outputs(engine: Engine, prompts: list[list[int]]) -> list[list[int]]:
    return [o.output_ids for o in engine.generate(prompts, GREEDY, progress=False)]


@pytest.fixture(scope="module")
def plain_outputs() -> list[list[int]]:
    return _outputs(Engine(engine_config(CHECKPOINT)), _prompts())


@pytest.mark.parametrize("steps", [1, 3])
def test_trained_head_is_accepted_and_changes_no_token(plain_outputs, steps):
    engine = Engine(replace(engine_config(CHECKPOINT), spec=SpecConfig("NEXTN", num_steps=steps)))
    assert _outputs(engine, _prompts()) == plain_outputs
    stats = engine.stats()["spec"]
    assert stats["accept_length"] >= MIN_ACCEPT_LENGTH[steps], stats
    assert_pools_at_baseline(engine)


@pytest.mark.parametrize("steps", [1, 3])
def test_graph_buffers_draft_what_the_eager_path_drafts(plain_outputs, steps):
    """The CUDA-graph verify and draft paths (static buffers, padded batch sizes; captured on
    the GPU, tests/gpu/test_gpu_spec.py), run eagerly on CPU: the same tokens and exactly the
    eager engine's acceptance, so the graphed drafter proposes what the eager one does."""
    from qnext.worker.runtime.spec_chain import DraftGraphs

    spec = replace(engine_config(CHECKPOINT), spec=SpecConfig("NEXTN", num_steps=steps))
    eager = Engine(spec)
    assert _outputs(eager, _prompts()) == plain_outputs
    engine = Engine(spec)
    ex = engine.executor
    ex.verify_graphs = engine.runner.make_graphs(eager=True, n=ex.n, spec_states=ex.buffers,
                                                 max_bs=3)  # 4 prompts: batches past it too
    ex.draft_graphs = DraftGraphs(ex.verify_graphs, ex.drafter, eager=True)
    assert _outputs(engine, _prompts()) == plain_outputs
    assert 0 < ex.verify_graphs.runs < ex.counters["verify_steps"]
    assert engine.stats()["spec"] == eager.stats()["spec"]
    assert_pools_at_baseline(engine)


SAMPLED = SamplingParams(temperature=0.7, top_k=20, max_new_tokens=40, ignore_eos=True,
                         seed=11)


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_overlap_loop_speculates_with_the_same_tokens_and_acceptance(steps, params):
    """The overlap loop plans each verify while the sequence's previous one is in flight
    (root, prefix and sampling counter only on the device): the tokens of plain decoding
    with the same seeds, and the acceptance of the normal loop — whose drafts it therefore
    reproduces — but for one verify per request wasted after its last token."""
    from qnext.worker.engine.loop import OverlapLoop

    plain = Engine(engine_config(CHECKPOINT))
    want = [o.output_ids for o in plain.generate(_prompts(), params, progress=False)]
    spec = SpecConfig("NEXTN", num_steps=steps)
    normal = Engine(replace(engine_config(CHECKPOINT), spec=spec))
    assert [o.output_ids for o in normal.generate(_prompts(), params, progress=False)] == want
    engine = Engine(replace(engine_config(CHECKPOINT, overlap=True), spec=spec))
    assert isinstance(engine.loop, OverlapLoop)
    assert [o.output_ids for o in engine.generate(_prompts(), params, progress=False)] == want
    got, ref = engine.stats()["spec"], normal.stats()["spec"]
    assert ref["verify_seqs"] <= got["verify_seqs"] <= ref["verify_seqs"] + len(SNIPPETS)
    assert abs(got["accept_length"] - ref["accept_length"]) < 0.1, (got, ref)
    assert_pools_at_baseline(engine)
