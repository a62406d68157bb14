"""Hypothesis fuzzing of one real `qnext serve` (context 64): random GenerateRequests, valid and
not (any input kind, sampling values incl. NaN / inf / huge / negative, stop lists, token ids
out of the vocabulary), sent unary or streamed. Every call ends within its deadline with OK or
a client error (never INTERNAL, UNKNOWN or DEADLINE_EXCEEDED); a request that breaks a rule
of generation.proto is refused with INVALID_ARGUMENT; and the pools are idle after each."""

from __future__ import annotations

import math

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from qnext.v1 import admin_pb2_grpc, generation_pb2 as g, generation_pb2_grpc
from tests.e2e.servers import Server, idle, until

CONTEXT, VOCAB, U32, U64 = 64, 384, 2**32 - 1, 2**64 - 1
CALL_TIMEOUT = 30.0
ROLES = ("system", "user", "assistant", "tool")


def floats(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(low, high, width=32)


ODD = st.one_of(st.floats(width=32), st.sampled_from([math.nan, math.inf, -math.inf, -1.0]))
SAMPLING = {  # field: (valid values, values that are mostly invalid)
    "temperature": (floats(0, 2), ODD),
    "top_p": (floats(0.5, 1), st.one_of(ODD, st.just(0.0))),
    "top_k": (st.integers(1, U32), st.just(0)),
    "min_p": (floats(0, 1), ODD),
    "repetition_penalty": (floats(0.5, 2.0**127), st.one_of(ODD, st.just(0.0))),
    "frequency_penalty": (floats(-2, 2), ODD),
    "presence_penalty": (floats(-2, 2), ODD),
    "max_new_tokens": (st.integers(1, 6), st.sampled_from([0, U32])),  # U32: to the context
    "min_new_tokens": (st.integers(0, 1), st.one_of(st.integers(7, 200), st.just(U32))),
    "stop": (st.lists(st.one_of(st.sampled_from(" eat\n\ufffd"), st.text(min_size=1, max_size=8)),
                      max_size=16),
             st.lists(st.text(max_size=300), min_size=1, max_size=20)),
    "stop_token_ids": (st.lists(st.integers(0, VOCAB - 1), max_size=4),
                       st.lists(st.integers(0, U32), min_size=1, max_size=4)),
    "seed": (st.integers(0, 2**63 - 1), st.integers(2**63, U64)),
}
TEXT = st.text(max_size=30)
VALID_INPUTS = st.one_of(
    st.builds(lambda t: {"text": t}, st.text(min_size=1, max_size=30)),
    st.builds(lambda ids: {"token_ids": g.TokenIds(ids=ids)},
              st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=20)),
    st.builds(lambda ms, add: {"chat": g.Chat(
        messages=[g.ChatMessage(role=r, content=c) for r, c in ms], add_generation_prompt=add)},
        st.lists(st.tuples(st.sampled_from(ROLES), TEXT), min_size=1, max_size=3), st.booleans()))
WILD_INPUTS = st.one_of(
    st.just({}), st.just({"text": ""}),
    st.builds(lambda ids: {"token_ids": g.TokenIds(ids=ids)},
              st.lists(st.integers(0, U32), max_size=CONTEXT + 4)),
    st.builds(lambda ms: {"chat": g.Chat(messages=[g.ChatMessage(role=r, content=c)
                                                   for r, c in ms])},
              st.lists(st.tuples(st.sampled_from(ROLES + ("", "wizard")), TEXT), max_size=3)))


@st.composite
def requests(draw) -> g.GenerateRequest:
    """Half of them keep every rule; the others draw each field from valid and wild values."""
    wild = draw(st.booleans())

    def value(valid, invalid):
        return draw(st.one_of(valid, invalid) if wild else valid)

    names = draw(st.lists(st.sampled_from(sorted(SAMPLING)), unique=True))
    sampling = g.SamplingParams(ignore_eos=draw(st.booleans()),
                                skip_special_tokens=draw(st.booleans()),
                                **{name: value(*SAMPLING[name]) for name in names})
    logprobs = g.LogprobOptions(enabled=draw(st.booleans()), top_logprobs=value(
        st.integers(0, 20), st.one_of(st.integers(21, 30), st.just(U32))))
    return g.GenerateRequest(
        request_id=draw(st.sampled_from(["", "fuzz"])), **value(VALID_INPUTS, WILD_INPUTS),
        sampling=sampling, logprobs=logprobs, separate_reasoning=draw(st.booleans()))


def broken_rule(request: g.GenerateRequest) -> str | None:
    """The first rule of generation.proto the request breaks (None: it may still be refused,
    e.g. a text longer than the context)."""
    s, kind = request.sampling, request.WhichOneof("input")
    has = s.HasField

    def within(name: str, low: float, high: float) -> bool:
        return not has(name) or (math.isfinite(getattr(s, name))
                                 and low <= getattr(s, name) <= high)

    rules = {
        "input": kind is not None and (kind != "text" or request.text != ""),
        "token_ids": kind != "token_ids" or 0 < len(request.token_ids.ids) < CONTEXT
        and max(request.token_ids.ids) < VOCAB,
        "chat": kind != "chat" or 0 < len(request.chat.messages)
        and all(m.role in ROLES for m in request.chat.messages),
        "temperature": within("temperature", 0, math.inf),
        "top_p": within("top_p", 0, 1) and (not has("top_p") or s.top_p > 0),
        "top_k": not has("top_k") or s.top_k >= 1, "min_p": within("min_p", 0, 1),
        "repetition_penalty": within("repetition_penalty", 0, math.inf)
        and (not has("repetition_penalty") or s.repetition_penalty > 0),
        "frequency_penalty": within("frequency_penalty", -2, 2),
        "presence_penalty": within("presence_penalty", -2, 2),
        "max_new_tokens": not has("max_new_tokens") or s.max_new_tokens >= 1,
        "min_new_tokens": s.min_new_tokens <= (s.max_new_tokens if has("max_new_tokens")
                                               else 128),
        "stop": len(s.stop) <= 16 and all(1 <= len(x) <= 256 for x in s.stop),
        "stop_token_ids": all(t < VOCAB for t in s.stop_token_ids),
        "seed": s.seed < 2**63, "top_logprobs": request.logprobs.top_logprobs <= 20,
    }
    return next((name for name, ok in rules.items() if not ok), None)


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    server = Server(tiny_checkpoint("tiny"), "--context-length", str(CONTEXT))
    yield server
    assert server.stop() == 0, server.log.read_text()[-2000:]


def send(server, request: g.GenerateRequest, stream: bool) -> tuple[g.Complete, list[int]]:
    """The call's Complete and token ids; raises grpc.RpcError on an error status."""
    gen = generation_pb2_grpc.GenerationStub(server.data)
    if not stream:
        reply = gen.Generate(request, timeout=CALL_TIMEOUT)
        assert reply.request_id == (request.request_id or reply.request_id)
        return reply.complete, list(reply.token_ids)
    replies = list(gen.Stream(request, timeout=CALL_TIMEOUT))
    assert all(r.WhichOneof("kind") == "chunk" for r in replies[:-1])
    return replies[-1].complete, [t for r in replies[:-1] for t in r.chunk.token_ids]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests(), stream=st.booleans())
def test_fuzzed_requests_end_cleanly(server, request, stream):
    rule = broken_rule(request)
    try:
        complete, token_ids = send(server, request, stream)
    except grpc.RpcError as err:
        event(f"refused: {rule}")
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
        assert err.details() and len(err.details()) < 300
    else:
        event("served" + (", stopped by a stop string" if complete.matched_stop_str else ""))
        assert rule is None, f"accepted a request that breaks the rule on {rule}"
        assert complete.finish_reason in (g.FINISH_REASON_STOP, g.FINISH_REASON_LENGTH)
        limit = request.sampling.max_new_tokens if request.sampling.HasField(
            "max_new_tokens") else 128
        assert len(token_ids) == complete.usage.completion_tokens <= min(limit, CONTEXT)
        assert all(t < VOCAB for t in token_ids)
    admin = admin_pb2_grpc.AdminStub(server.control)
    until(lambda: idle(admin, server.auth))
