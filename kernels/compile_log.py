"""Which Triton kernels compile, and when: a chained hook on Triton's post-compile callback.

After the start-up warm-up (worker/runtime/warmup.py) and the decode-graph capture, a
compilation means a request waited (seconds, on every rank) for a shape class the warm-up
missed. The engine therefore logs every later one (`log_compiles_from_now`, event
`triton_compile_after_warmup` with the kernel and its specialisation), so a server log names
the class to add, and the GPU test `test_gpu_warmup.py` asserts that a serving-like run after
the warm-up compiles nothing (`CompileWatch`).

Triton calls the hook after each compilation that is not in the process's in-memory cache
(a hit in the on-disk cache counts too: still a stall, shorter). No Triton, or one without
`triton.knobs.runtime.jit_post_compile_hook` (3.4 and later have it): every call is a no-op.
Pure Python apart from Triton's knob; imports Triton lazily (CI has none).
"""

from __future__ import annotations

from collections.abc import Callable

_logging = False
_quiet = 0  # > 0 inside `quiet()`: a warm-up or graph capture, whose compiles are expected


def _runtime_knobs():
    try:
        import triton
    except ImportError:
        return None
    knobs = getattr(getattr(triton, "knobs", None), "runtime", None)
    return knobs if hasattr(knobs, "jit_post_compile_hook") else None


def describe(hook_kwargs: dict) -> str:
    """`name[warps=.., stages=..](constexprs; div16: integers taken as multiples of 16)`
    from the post-compile hook's arguments: the specialisation a later call must match.
    (Triton 3.6's own `repr` pairs the argument names with the wrong entries.) Falls back
    to that `repr` when the arguments are not shaped as in Triton 3.4-3.6."""
    fn, spec = hook_kwargs.get("fn"), hook_kwargs.get("compile")
    try:
        names = list(spec["signature"])
        consts = [f"{names[path[0]]}={value}" for path, value in spec["constants"].items()]
        div16 = [names[path[0]] for path, attrs in spec["configs"][0].items()
                 if not spec["signature"][names[path[0]]].startswith("*")
                 and ["tt.divisibility", 16] in [list(a) for a in attrs]]
        head = f"{fn.name}[warps={spec['num_warps']}, stages={spec['num_stages']}]"
    except (AttributeError, IndexError, KeyError, TypeError):
        return str(hook_kwargs.get("repr", fn))
    return f"{head}({', '.join(consts)}; div16: {', '.join(div16) or '-'})"


class CompileWatch:
    """`on_compile(description)` for every Triton compilation between `start` and `stop` (or
    inside `with`); hooks already installed keep being called."""

    def __init__(self, on_compile: Callable[[str], None]) -> None:
        self.on_compile = on_compile
        self._knobs, self._previous, self._hook = None, None, None

    def start(self) -> CompileWatch:
        self._knobs = _runtime_knobs()
        if self._knobs is not None:
            self._previous = previous = self._knobs.jit_post_compile_hook

            def hook(**kwargs):
                self.on_compile(describe(kwargs))
                return previous(**kwargs) if previous is not None else None

            self._hook = self._knobs.jit_post_compile_hook = hook
        return self

    def stop(self) -> None:
        """Restore the previous hook (only if ours is still the one installed)."""
        if self._knobs is not None and self._knobs.jit_post_compile_hook is self._hook:
            self._knobs.jit_post_compile_hook = self._previous
        self._knobs = None

    def __enter__(self) -> CompileWatch:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class quiet:  # noqa: N801 - used as `with compile_log.quiet():`
    """Compiles inside are expected (warm-up, graph capture): `log_compiles_from_now` skips
    them, also when an earlier engine of the process installed the hook."""

    def __enter__(self) -> None:
        global _quiet
        _quiet += 1

    def __exit__(self, *exc) -> None:
        global _quiet
        _quiet -= 1


def log_compiles_from_now(log) -> None:
    """Log every later compilation of this process outside `quiet()` as a warning (once per
    process: engines rebuilt in one process share the hook)."""
    global _logging
    if not _logging:
        CompileWatch(lambda kernel: None if _quiet else log.warning(
            "triton_compile_after_warmup", kernel=kernel)).start()
        _logging = True
