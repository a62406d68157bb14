"""`qnext serve --speculative-algorithm NEXTN` on the embedded tiny model: requests decode through
draft + verify steps, Admin GetStats reports the accept length and rate, and Abort or a client
cancel while a request is verifying frees every page and slot (issue 9's "during a spec
verify"). Token equality with plain decoding is tests/engine/test_spec_engine.py's job."""

from __future__ import annotations

import pytest

from qnext.v1 import generation_pb2 as g
from tests.e2e import test_cancel
from tests.e2e.servers import Server
from tests.e2e.test_cancel import LONG, end, stats

gen = test_cancel.gen  # the fixture: every page and slot free around each test


@pytest.fixture(scope="module")
def server():
    server = Server(None, "--speculative-algorithm", "NEXTN", "--speculative-num-steps", "2")
    yield server
    assert server.stop() == 0, server.log.read_text()[-2000:]


def test_stats_report_acceptance(server, gen):
    reply = gen.Generate(g.GenerateRequest(text="hello there", sampling=g.SamplingParams(
        temperature=0, max_new_tokens=12, ignore_eos=True)), timeout=120)
    assert len(reply.token_ids) == 12
    now = stats(server)
    assert now.HasField("spec_accept_length") and now.HasField("spec_accept_rate")
    assert 1.0 <= now.spec_accept_length <= 3.0  # 2 proposals + the bonus token at most
    assert 0.0 <= now.spec_accept_rate <= 1.0


@pytest.mark.parametrize("how", ["abort", "cancel"])
def test_ending_a_request_while_it_verifies(server, gen, how):
    rid = f"verify-{how}"
    stream = gen.Stream(g.GenerateRequest(request_id=rid, text="fourth", sampling=LONG),
                        timeout=120)
    assert next(stream).chunk.token_ids and next(stream).chunk.token_ids  # verifying now
    end(gen, how, rid, stream, tokens=2)
