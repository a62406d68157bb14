"""`CompileWatch` chains onto Triton's post-compile hook and gives it back. Triton compiles
nothing without a GPU, so the hook is called here the way Triton calls it (keyword
arguments); the GPU test test_gpu_warmup.py watches real compilations."""

from __future__ import annotations

import pytest

from qnext.kernels.compile_log import CompileWatch


def test_watch_chains_and_restores_the_previous_hook():
    triton = pytest.importorskip("triton")
    knobs = getattr(getattr(triton, "knobs", None), "runtime", None)
    if not hasattr(knobs, "jit_post_compile_hook"):
        pytest.skip("this Triton has no jit_post_compile_hook")
    outer, inner = [], []
    saved = knobs.jit_post_compile_hook
    knobs.jit_post_compile_hook = lambda **kw: outer.append(kw["repr"])
    first = knobs.jit_post_compile_hook
    try:
        with CompileWatch(inner.append):
            knobs.jit_post_compile_hook(repr="_k[num_warps=4](x: *fp32)", fn=None)
        assert inner == outer == ["_k[num_warps=4](x: *fp32)"]
        assert knobs.jit_post_compile_hook is first
    finally:
        knobs.jit_post_compile_hook = saved


def test_watch_without_triton_is_a_no_op():
    with CompileWatch(lambda _: None) as watch:
        pass
    assert watch._knobs is None


def test_logging_skips_compiles_inside_quiet(monkeypatch):
    """After `log_compiles_from_now`, a compile is a warning unless inside `quiet()` (a
    warm-up or graph capture, also another engine's in the same process)."""
    triton = pytest.importorskip("triton")
    knobs = getattr(getattr(triton, "knobs", None), "runtime", None)
    if not hasattr(knobs, "jit_post_compile_hook"):
        pytest.skip("this Triton has no jit_post_compile_hook")
    from qnext.kernels import compile_log

    class Log:
        def __init__(self):
            self.events = []

        def warning(self, event, **fields):
            self.events.append((event, fields["kernel"]))

    log = Log()
    monkeypatch.setattr(compile_log, "_logging", False)
    monkeypatch.setattr(knobs, "jit_post_compile_hook", None)
    compile_log.log_compiles_from_now(log)
    with compile_log.quiet():
        knobs.jit_post_compile_hook(repr="_warm[num_warps=4]()", fn=None)
    knobs.jit_post_compile_hook(repr="_late[num_warps=4]()", fn=None)
    assert log.events == [("triton_compile_after_warmup", "_late[num_warps=4]()")]


def test_describe_names_the_specialisation():
    """The hook's arguments as Triton 3.6 passes them: constexprs (declared, and integers
    equal to 1) by name, and the integer arguments it took as multiples of 16."""
    from qnext.kernels.compile_log import describe

    class Fn:
        name = "_k"

    spec = dict(signature={"x_ptr": "*bf16", "n": "i32", "m": "i32", "M": "constexpr",
                           "BK": "constexpr"},
                constants={(3,): 1, (4,): 64}, num_warps=4, num_stages=3,
                configs=[{(0,): [["tt.divisibility", 16]], (2,): [["tt.divisibility", 16]]}])
    assert describe(dict(fn=Fn(), compile=spec, repr="r")) == \
        "_k[warps=4, stages=3](M=1, BK=64; div16: m)"
    assert describe(dict(fn=None, repr="_k[num_warps=4]()")) == "_k[num_warps=4]()"
