"""`qnext serve` as a real process on 127.0.0.1 with real gRPC clients: unary and streamed
generation (text, chat, ids) equal the offline engine's output; stop strings and stop ids;
cancellation and deadlines free pages and slots; bad input is INVALID_ARGUMENT."""

from __future__ import annotations

import grpc
import pytest
from transformers import AutoTokenizer

from qnext.v1 import admin_pb2_grpc, generation_pb2 as g, generation_pb2_grpc
from qnext.worker.engine import Engine
from qnext.worker.sched.request import SamplingParams
from tests.e2e.servers import Server, idle, serve_config, until
from tests.net import free_port

GREEDY = g.SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True)
METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def setup(tiny_checkpoint):
    path = tiny_checkpoint("tiny")
    server = Server(path, "--metrics-port", str(METRICS_PORT))
    yield path, server
    assert server.stop() == 0, server.log.read_text()[-2000:]


@pytest.fixture(scope="module")
def offline(setup):
    """The offline engine with the server's (default) flags, and the HF tokenizer."""
    path, _ = setup
    engine = Engine(serve_config(path))
    tok = AutoTokenizer.from_pretrained(str(path))

    def run(ids: list[int], **params) -> list[int]:
        """Greedy output ids (the whole GenerationOutput when `params` ask for more)."""
        sampling = SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True, **params)
        out = engine.generate([ids], sampling)[0]
        return out if params else out.output_ids

    return run, tok


def stubs(server):
    return (generation_pb2_grpc.GenerationStub(server.data),
            admin_pb2_grpc.AdminStub(server.control))


@pytest.mark.parametrize("kind", ["text", "chat", "ids"])
def test_unary_and_stream_equal_the_offline_engine(setup, offline, kind):
    _, server = setup
    run, tok = offline
    gen, _ = stubs(server)
    if kind == "text":
        req = g.GenerateRequest(text="The quick brown fox", sampling=GREEDY)
        ids = tok("The quick brown fox", add_special_tokens=False)["input_ids"]
    elif kind == "chat":
        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
        req = g.GenerateRequest(chat=g.Chat(messages=[g.ChatMessage(**m) for m in msgs]),
                                sampling=GREEDY)
        prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
    else:
        ids = [5, 17, 300, 42, 7, 7, 99]
        req = g.GenerateRequest(token_ids=g.TokenIds(ids=ids), sampling=GREEDY)
    want = run(ids)
    unary = gen.Generate(req, timeout=60)
    assert list(unary.token_ids) == want
    assert unary.text == tok.decode(want, skip_special_tokens=True)
    assert unary.complete.finish_reason == g.FINISH_REASON_LENGTH
    assert unary.complete.usage.prompt_tokens == len(ids)
    assert unary.complete.usage.completion_tokens == 12
    chunks = list(gen.Stream(req, timeout=60))
    assert chunks[-1].WhichOneof("kind") == "complete"
    assert all(c.WhichOneof("kind") == "chunk" for c in chunks[:-1])
    assert [t for c in chunks[:-1] for t in c.chunk.token_ids] == want
    assert "".join(c.chunk.text for c in chunks[:-1]) == unary.text
    assert chunks[-2].chunk.usage.completion_tokens <= 12
    assert chunks[-1].complete.usage.completion_tokens == 12


def test_stop_string_and_stop_token(setup, offline):
    _, server = setup
    run, tok = offline
    gen, _ = stubs(server)
    ids = [11, 12, 13, 14]
    want = run(ids)
    text = tok.decode(want, skip_special_tokens=True)
    stop = text[len(text) // 2:len(text) // 2 + 2]
    assert stop.strip(), "pick a visible stop string"
    got = gen.Generate(g.GenerateRequest(token_ids=g.TokenIds(ids=ids), sampling=g.SamplingParams(
        temperature=0, max_new_tokens=12, ignore_eos=True, stop=[stop])), timeout=60)
    assert got.text == text[:text.index(stop)]
    assert got.complete.finish_reason == g.FINISH_REASON_STOP
    assert got.complete.matched_stop_str == stop
    by_id = gen.Generate(g.GenerateRequest(token_ids=g.TokenIds(ids=ids), sampling=g.SamplingParams(
        temperature=0, max_new_tokens=12, ignore_eos=True, stop_token_ids=[want[3]])), timeout=60)
    assert list(by_id.token_ids) == want[:want.index(want[3]) + 1]
    assert by_id.complete.matched_token_id == want[3]


def test_cancelled_stream_and_deadline_free_the_pools(setup):
    _, server = setup
    gen, admin = stubs(server)
    long = g.SamplingParams(temperature=0, max_new_tokens=5000, ignore_eos=True)
    stream = gen.Stream(g.GenerateRequest(text="go on and on", sampling=long), timeout=60)
    assert next(stream).chunk.token_ids  # it is decoding
    stream.cancel()
    until(lambda: idle(admin, server.auth))
    with pytest.raises(grpc.RpcError) as err:
        gen.Generate(g.GenerateRequest(text="and on", sampling=long), timeout=0.3)
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    until(lambda: idle(admin, server.auth))


def test_abort_rpc_ends_a_stream_with_abort(setup):
    _, server = setup
    gen, admin = stubs(server)
    long = g.SamplingParams(temperature=0, max_new_tokens=5000, ignore_eos=True)
    stream = gen.Stream(g.GenerateRequest(request_id="to-abort", text="x", sampling=long),
                        timeout=60)
    assert next(stream).request_id == "to-abort"
    reply = gen.Abort(g.AbortRequest(request_ids=["to-abort", "nope"]), timeout=10)
    assert list(reply.aborted) == ["to-abort"] and list(reply.not_found) == ["nope"]
    last = list(stream)[-1]
    assert last.complete.finish_reason == g.FINISH_REASON_ABORT
    until(lambda: idle(admin, server.auth))


@pytest.mark.parametrize("request_, field", [
    (g.GenerateRequest(), "input"),
    (g.GenerateRequest(text=""), "empty"),
    (g.GenerateRequest(token_ids=g.TokenIds(ids=[1, 10**6])), "token ids"),
    (g.GenerateRequest(text="a", sampling=g.SamplingParams(temperature=-1)), "temperature"),
    (g.GenerateRequest(text="a", sampling=g.SamplingParams(top_p=0)), "top_p"),
    (g.GenerateRequest(text="a", sampling=g.SamplingParams(max_new_tokens=0)), "max_new_tokens"),
    (g.GenerateRequest(text="a", sampling=g.SamplingParams(stop=[""])), "stop"),
    (g.GenerateRequest(chat=g.Chat()), "message"),
])
def test_bad_input_is_invalid_argument(setup, request_, field):
    _, server = setup
    gen, _ = stubs(server)
    for call in (gen.Generate, lambda r, timeout: list(gen.Stream(r, timeout=timeout))):
        with pytest.raises(grpc.RpcError) as err:
            call(request_, timeout=10)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert field in err.value.details()
    assert gen.Generate(g.GenerateRequest(text="still serving", sampling=GREEDY), timeout=60)


def test_qnext_chat_streams_the_answers(setup):
    """`qnext chat` one-shot, then two turns from stdin (the second sent with the history)."""
    import subprocess
    import sys

    _, server = setup
    gen, _ = stubs(server)
    base = [sys.executable, "-m", "qnext.cli.main", "chat", "--addr", server.address,
            "--max-new-tokens", "6", "--temperature", "0"]
    one = subprocess.run([*base, "--prompt", "Hi!"], capture_output=True, text=True, timeout=120)
    want = gen.Generate(g.GenerateRequest(chat=g.Chat(messages=[g.ChatMessage(
        role="user", content="Hi!")]), sampling=g.SamplingParams(temperature=0,
                                                                  max_new_tokens=6)),
        timeout=60).text
    assert one.returncode == 0 and one.stdout == want + "\n"
    two = subprocess.run(base, input="Hi!\nAnd again?\n", capture_output=True, text=True,
                         timeout=120)
    assert two.returncode == 0 and two.stdout.startswith(want + "\n")
    assert two.stdout.count("\n") >= 2


def test_prometheus_metrics_count_requests_and_follow_the_worker(setup):
    import re
    import urllib.request

    _, server = setup
    gen, _ = stubs(server)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10) as r:
            return r.read().decode()

    def count(text: str) -> float:
        pattern = r'qnext_requests_total\{method="Generate",outcome="length"\} (\S+)'
        found = re.search(pattern, text)
        return float(found.group(1)) if found else 0.0

    before = count(scrape())
    gen.Generate(g.GenerateRequest(text="metrics", sampling=GREEDY), timeout=60)
    text = scrape()
    assert count(text) == before + 1
    assert "qnext_time_to_first_token_seconds_bucket" in text
    until(lambda: re.search(r"^qnext_kv_pages_free (\S+)", scrape(), re.M) is not None
          and float(re.search(r"^qnext_kv_pages_free (\S+)", scrape(), re.M).group(1)) > 0)


def test_logprobs_match_the_offline_engine(setup, offline):
    _, server = setup
    gen, _ = stubs(server)
    ids = [9, 8, 7, 6, 5]
    got = gen.Generate(g.GenerateRequest(
        token_ids=g.TokenIds(ids=ids), sampling=GREEDY,
        logprobs=g.LogprobOptions(enabled=True, top_logprobs=3)), timeout=60)
    want = offline[0](ids, logprobs=True, top_logprobs=3)
    assert [lp.token_id for lp in got.logprobs] == want.output_ids
    assert max(abs(a.logprob - b) for a, b in zip(got.logprobs, want.logprobs)) < 1e-5
    assert all(len(lp.top) == 3 and lp.top[0].logprob >= lp.top[2].logprob
               for lp in got.logprobs)
