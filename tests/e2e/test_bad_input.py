"""Bad input against one real `qnext serve` (context 256): every malformed request ends with
INVALID_ARGUMENT (FAILED_PRECONDITION where the server's state is the problem) and a short
message naming the field, never INTERNAL or a hang, and the server keeps serving. Also the
edges that are valid: unusual unicode, extreme sampling values, max_new_tokens beyond the
context (clamped: the request ends with LENGTH when prompt + output fill the context)."""

from __future__ import annotations

import math

import grpc
import pytest

from qnext.v1 import admin_pb2 as a, admin_pb2_grpc, generation_pb2 as g, generation_pb2_grpc
from qnext_grpc.errors import MAX_DETAILS
from tests.e2e.servers import Server, idle, until

CONTEXT, VOCAB, U32 = 256, 384, 2**32 - 1
SHORT = g.SamplingParams(temperature=0, max_new_tokens=3, ignore_eos=True)
LONG = g.SamplingParams(temperature=0, max_new_tokens=10_000, ignore_eos=True)


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    server = Server(tiny_checkpoint("tiny"), "--context-length", str(CONTEXT))
    yield server
    assert server.stop() == 0, server.log.read_text()[-2000:]


@pytest.fixture
def gen(server):
    return generation_pb2_grpc.GenerationStub(server.data)


@pytest.fixture
def admin(server):
    stub = admin_pb2_grpc.AdminStub(server.control)
    return lambda method, request, timeout=30: getattr(stub, method)(
        request, metadata=server.auth, timeout=timeout)


def ids(n: int) -> g.TokenIds:
    return g.TokenIds(ids=[5 + i % 300 for i in range(n)])


def sampled(**fields) -> g.GenerateRequest:
    return g.GenerateRequest(text="a", sampling=g.SamplingParams(**fields))


def chat(*messages: tuple[str, str]) -> g.GenerateRequest:
    return g.GenerateRequest(chat=g.Chat(messages=[g.ChatMessage(role=r, content=c)
                                                   for r, c in messages]), sampling=SHORT)


def error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(*args, timeout=30, **kwargs)
    return err.value


def both(gen):
    """Generate and Stream, as calls that return once the RPC is over."""
    return gen.Generate, lambda request, timeout: list(gen.Stream(request, timeout=timeout))


def assert_serving(gen) -> None:
    reply = gen.Generate(g.GenerateRequest(text="still serving", sampling=SHORT), timeout=60)
    assert reply.complete.finish_reason == g.FINISH_REASON_LENGTH


BAD = [
    (g.GenerateRequest(), "input"),
    (g.GenerateRequest(text=""), "empty"),
    (g.GenerateRequest(token_ids=g.TokenIds()), "token_ids"),
    (g.GenerateRequest(token_ids=g.TokenIds(ids=[1, VOCAB])), "token ids"),
    (g.GenerateRequest(token_ids=g.TokenIds(ids=[U32])), "token ids"),
    (g.GenerateRequest(token_ids=ids(CONTEXT)), "context length"),
    (g.GenerateRequest(text="word " * 2 * CONTEXT), "context length"),
    *[(sampled(temperature=v), "temperature") for v in (-1, math.nan, math.inf)],
    *[(sampled(top_p=v), "top_p") for v in (0, -0.5, 1.5, math.nan)],
    (sampled(top_k=0), "top_k"),
    *[(sampled(min_p=v), "min_p") for v in (-0.1, 2, math.nan)],
    *[(sampled(repetition_penalty=v), "repetition_penalty") for v in (0, -1, math.nan, math.inf)],
    *[(sampled(frequency_penalty=v), "frequency_penalty") for v in (2.5, -math.inf, math.nan)],
    *[(sampled(presence_penalty=v), "presence_penalty") for v in (-3, math.inf)],
    *[(sampled(seed=v), "seed") for v in (2**63, 2**64 - 1)],
    (sampled(max_new_tokens=0), "max_new_tokens"),
    (sampled(max_new_tokens=2, min_new_tokens=3), "min_new_tokens"),
    (sampled(stop=[""]), "stop"), (sampled(stop=["x" * 257]), "stop"),
    (sampled(stop=["x"] * 17), "stop"),
    (sampled(stop_token_ids=[7, VOCAB]), "stop_token_ids"),
    *[(g.GenerateRequest(text="a", logprobs=g.LogprobOptions(enabled=True, top_logprobs=v)),
       "top_logprobs") for v in (21, U32)],
    (g.GenerateRequest(chat=g.Chat()), "messages"),
    (chat(("wizard", "hi")), "role"), (chat(("", "hi")), "role"),
    (chat(("user", "hi"), ("robot", "hi")), "role"),
]


@pytest.mark.parametrize("request_, field", BAD)
def test_malformed_request_is_invalid_argument_naming_the_field(server, gen, request_, field):
    for call in both(gen):
        err = error(call, request_)
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert field in err.details() and len(err.details()) < 300
    assert_serving(gen)


ECHOED = [  # values an error message could echo in full: the details must stay short
    (g.GenerateRequest(text="a", sampling=g.SamplingParams(stop_token_ids=[U32] * 100_000)),
     "stop_token_ids"),
    (chat(("r" * 100_000, "hi")), "role"),
]


@pytest.mark.parametrize("request_, field", ECHOED)
def test_errors_do_not_echo_huge_values(gen, request_, field):
    err = error(gen.Generate, request_)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert field in err.details() and len(err.details()) < 300
    assert_serving(gen)


def test_admin_errors_do_not_echo_huge_values(admin):
    err = error(admin, "SetLogLevel", a.SetLogLevelRequest(level="x" * 100_000))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert len(err.details()) <= MAX_DETAILS + 3


UNUSUAL = ["\x00", "\u202e\u202d", "\ufeffbom", "\U0001F600\U0001F468\u200d\U0001F469",
           "\uffff\U0010FFFF", "e\u0301\u0338", "\ufffd", "\r\n\t\x0b\x0c", "<|im_end|>",
           "<think></think>", "\u0000" * 100]


@pytest.mark.parametrize("text", UNUSUAL, ids=lambda text: ascii(text)[:24])
def test_unusual_unicode_is_served(gen, text):
    stops = [text[:256]]
    for request_ in (g.GenerateRequest(text=text, sampling=SHORT, separate_reasoning=True),
                     g.GenerateRequest(text="x", sampling=g.SamplingParams(
                         temperature=0, max_new_tokens=3, stop=stops)),
                     chat(("system", text), ("user", text))):
        unary = gen.Generate(request_, timeout=60)
        assert unary.complete.finish_reason in (g.FINISH_REASON_STOP, g.FINISH_REASON_LENGTH)
        streamed = list(gen.Stream(request_, timeout=60))
        assert "".join(m.chunk.text for m in streamed[:-1]) == unary.text  # greedy: the same


def test_surrogates_cannot_be_sent():
    """A lone surrogate is not UTF-8: the client library refuses to serialize it."""
    with pytest.raises(ValueError):  # UnicodeEncodeError
        g.GenerateRequest(text="\ud800").SerializeToString()


UNDECODABLE = [b"\x12\x03\xed\xa0\x80", b"\x12\x02\xff\xfe", b"\xff\xff\xff", b"\x12\x10ab"]


def raw_generate(server):
    return server.data.unary_unary("/qnext.v1.Generation/Generate",
                                   request_serializer=bytes, response_deserializer=bytes)


@pytest.mark.parametrize("body", UNDECODABLE, ids=repr)
def test_undecodable_bytes_leave_the_server_serving(server, gen, body):
    err = error(raw_generate(server), body)
    assert err.code() is not grpc.StatusCode.INTERNAL
    assert_serving(gen)


@pytest.mark.parametrize("body", UNDECODABLE, ids=repr)
def test_undecodable_bytes_are_invalid_argument(server, body):
    err = error(raw_generate(server), body)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("request_", [
    g.GenerateRequest(text="x" * (5 << 20)),  # over the 4 MiB a gRPC server receives
    g.GenerateRequest(token_ids=g.TokenIds(ids=[U32] * (1 << 20)))], ids=["text", "token_ids"])
def test_oversized_message_is_resource_exhausted(gen, request_):
    err = error(gen.Generate, request_)
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_serving(gen)


def test_extreme_but_valid_sampling_runs(gen):
    for fields in (dict(top_k=U32), dict(temperature=1e-45), dict(temperature=3e38),
                   dict(top_p=1e-45, min_p=1), dict(repetition_penalty=1e-45),
                   dict(repetition_penalty=3e38, frequency_penalty=2, presence_penalty=-2),
                   dict(seed=2**63 - 1), dict(stop_token_ids=[VOCAB - 1] * 10_000)):
        request_ = g.GenerateRequest(token_ids=ids(8), sampling=g.SamplingParams(
            max_new_tokens=3, ignore_eos=True, **fields))
        reply = gen.Generate(request_, timeout=60)
        assert reply.complete.finish_reason in (g.FINISH_REASON_STOP, g.FINISH_REASON_LENGTH)
        assert 1 <= len(reply.token_ids) <= 3 and max(reply.token_ids) < VOCAB


def test_stop_string_edges(gen):
    """The most and longest stops allowed, duplicates, and one that matches the first text."""
    base = gen.Generate(g.GenerateRequest(token_ids=ids(4), sampling=SHORT), timeout=60)
    first = next(c for c in base.text if c != "\ufffd")
    stops = [first * 256] * 14 + [first, first]
    reply = gen.Generate(g.GenerateRequest(token_ids=ids(4), sampling=g.SamplingParams(
        temperature=0, max_new_tokens=3, ignore_eos=True, stop=stops)), timeout=60)
    assert reply.text == base.text[:base.text.index(first)]
    assert reply.complete.matched_stop_str == first
    assert reply.complete.finish_reason == g.FINISH_REASON_STOP


@pytest.mark.parametrize("prompt_len, min_new", [(CONTEXT - 6, 0), (CONTEXT - 1, U32)])
def test_max_new_tokens_beyond_the_context_ends_with_length(gen, prompt_len, min_new):
    """Clamped, not an error: the request ends with LENGTH once prompt + output fill it."""
    sampling = g.SamplingParams(temperature=0, max_new_tokens=U32, min_new_tokens=min_new)
    for call in both(gen):
        reply = call(g.GenerateRequest(token_ids=ids(prompt_len), sampling=sampling),
                     timeout=60)
        complete = reply.complete if isinstance(reply, g.GenerateResponse) else \
            reply[-1].complete
        assert complete.finish_reason == g.FINISH_REASON_LENGTH
        assert complete.usage.completion_tokens == CONTEXT - prompt_len


def test_long_text_does_not_stall_other_calls(gen):
    """A text just under the size limit takes seconds to tokenize: off the event loop."""
    text = "".join(chr(33 + (i * 7919) % 90) for i in range(1_500_000))
    big = gen.Generate.future(g.GenerateRequest(text=text, sampling=SHORT), timeout=120)
    assert_serving(gen)
    assert not big.done()
    assert big.exception().code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "context length" in big.exception().details()


@pytest.mark.parametrize("rid", ["dup", "d" * 20_000], ids=["short", "long"])
def test_duplicate_request_id_while_running(server, gen, rid):
    stream = gen.Stream(g.GenerateRequest(request_id=rid, text="x", sampling=LONG), timeout=60)
    try:
        assert next(stream).chunk.token_ids  # running
        for call in both(gen):
            err = error(call, g.GenerateRequest(request_id=rid, text="y", sampling=SHORT))
            assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()[:200]
            assert "request_id" in err.details() and len(err.details()) <= MAX_DETAILS + 3
        assert next(stream).chunk.token_ids  # the first one still runs
    finally:
        stream.cancel()
    until(lambda: idle(admin_pb2_grpc.AdminStub(server.control), server.auth))
    assert gen.Generate(g.GenerateRequest(request_id=rid, text="y", sampling=SHORT), timeout=60)


def test_request_id_is_free_once_a_stop_string_ended_the_call(gen):
    """The worker may still decode after the front end saw the stop: the call only returns
    once the worker's request is over, so the id can be reused at once."""
    base = gen.Generate(g.GenerateRequest(token_ids=ids(4), sampling=SHORT), timeout=60)
    stop = next(c for c in base.text if c != "\ufffd")
    request_ = g.GenerateRequest(request_id="again", token_ids=ids(4), sampling=g.SamplingParams(
        temperature=0, max_new_tokens=200, ignore_eos=True, stop=[stop]))
    for _ in range(10):
        assert gen.Generate(request_, timeout=60).complete.matched_stop_str == stop


def test_abort_of_unknown_repeated_and_no_ids(server, gen):
    reply = gen.Abort(g.AbortRequest(request_ids=["nope", "", "nope"]), timeout=30)
    assert list(reply.aborted) == [] and list(reply.not_found) == ["nope", ""]
    assert gen.Abort(g.AbortRequest(), timeout=30) == g.AbortResponse()
    stream = gen.Stream(g.GenerateRequest(request_id="twice", text="x", sampling=LONG),
                        timeout=60)
    assert next(stream).chunk.token_ids
    reply = gen.Abort(g.AbortRequest(request_ids=["twice", "twice"]), timeout=30)
    assert list(reply.aborted) == ["twice"] and list(reply.not_found) == []
    assert list(stream)[-1].complete.finish_reason == g.FINISH_REASON_ABORT
    until(lambda: idle(admin_pb2_grpc.AdminStub(server.control), server.auth))


def plan(admin) -> tuple:
    """The memory plan in force (not what the pools hold right now)."""
    mem = admin("GetMemory", a.GetMemoryRequest())
    return (mem.strategy, mem.mamba_full_memory_ratio, mem.max_total_tokens, mem.pages.total,
            mem.state_slots.total)


def resize(dry_run: bool = True, **target) -> a.ResizeMambaCacheRequest:
    return a.ResizeMambaCacheRequest(dry_run=dry_run, **target)


ADMIN_BAD = [
    ("SetRadixStrategy", a.SetRadixStrategyRequest(), "strategy"),
    ("SetRadixStrategy", a.SetRadixStrategyRequest(strategy=99), "strategy"),
    ("ResizeMambaCache", resize(), "target"),
    *[("ResizeMambaCache", resize(dry, ratio=v), "ratio")
      for v in (0, -1, math.nan, 1e-300) for dry in (True, False)],
    *[("ResizeMambaCache", resize(dry, ratio=math.inf), "ratio") for dry in (True, False)],
    *[("ResizeMambaCache", resize(dry, num_slots=v), "mamba-cache-size")
      for v in (0, U32) for dry in (True, False)],
    ("ResizeMambaCache", resize(num_slots=1), "state slots"),
    ("SetLogLevel", a.SetLogLevelRequest(level="loud"), "level"),
]


@pytest.mark.parametrize("method, request_, field", ADMIN_BAD)
def test_admin_rejects_bad_values_and_changes_nothing(admin, method, request_, field):
    before = plan(admin)
    err = error(admin, method, request_)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert field in err.details()
    assert plan(admin) == before


def test_resize_that_cannot_hold_a_running_request_is_failed_precondition(server, gen, admin):
    """A ratio that leaves a few KV tokens is a possible plan, but not with a request running
    that has more tokens than that (how few is the remainder of the memory split: ask)."""
    before = plan(admin)
    few = admin("ResizeMambaCache", resize(ratio=1e300), timeout=30).memory.max_total_tokens
    assert few < CONTEXT // 2, few
    stream = gen.Stream(g.GenerateRequest(token_ids=ids(few), sampling=LONG), timeout=60)
    try:
        assert next(stream).chunk.token_ids  # running, few + 1 tokens and growing
        err = error(admin, "ResizeMambaCache", resize(False, ratio=1e300))
        assert err.code() is grpc.StatusCode.FAILED_PRECONDITION, err.details()
        assert "running request" in err.details()
    finally:
        stream.cancel()
        if plan(admin) != before:  # it was applied: put the old plan back
            admin("ResizeMambaCache", resize(False, ratio=before[1]))
    until(lambda: idle(admin_pb2_grpc.AdminStub(server.control), server.auth))
    assert plan(admin) == before
