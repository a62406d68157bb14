"""The speculative-decoding section of the frozen config, with SGLang's flag names, defaults
and constraints (pure Python).

- `--speculative-algorithm NEXTN` drafts with the checkpoint's own MTP head (the draft path is
  the target's); `EAGLE` takes the head from a separate draft checkpoint
  (`--speculative-draft-model-path`): today one in the MTP head's layout (`mtp.*` tensors, a
  config.json with the target's hidden size and vocabulary; `runtime/model_runner.draft_config`).
- Unset sizes default to (steps, topk, draft tokens) = (3, 1, 4), SGLang's choice for
  Qwen3-Next. With topk = 1 the draft is a chain: draft tokens = steps + 1 (root included);
  another explicit value is an error naming both flags. With topk > 1 (trees) the draft tokens
  default to the largest tree, 1 + topk + (steps - 1) * topk^2, and may be fewer.
- Every running request holds draft-tokens intermediate states per GDN layer during verify, so
  the memory plan must count them (issue 8; today only the draft head's KV layer is counted).
  What the engine runs so far (NEXTN chains, TP 1, no extra_buffer) is checked by `Config`.
"""

from __future__ import annotations

from dataclasses import dataclass

from qnext.worker.errors import ConfigError

ALGORITHMS = ("NEXTN", "EAGLE")
DEFAULT_STEPS, DEFAULT_TOPK = 3, 1


def _positive(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{flag} must be >= 1, got {value}")


@dataclass(frozen=True, slots=True)
class SpecConfig:
    """algorithm None: no speculative decoding (the sizes must then be unset)."""

    algorithm: str | None = None
    draft_model_path: str | None = None
    num_steps: int | None = None
    eagle_topk: int | None = None
    num_draft_tokens: int | None = None

    def __post_init__(self) -> None:
        sizes = (self.num_steps, self.eagle_topk, self.num_draft_tokens)
        if self.algorithm is None:
            if any(v is not None for v in sizes) or self.draft_model_path is not None:
                raise ConfigError("--speculative-* options need --speculative-algorithm")
            return
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"--speculative-algorithm {self.algorithm!r}: choose one of "
                              f"{', '.join(ALGORITHMS)}")
        if self.algorithm == "EAGLE" and self.draft_model_path is None:
            raise ConfigError("--speculative-algorithm EAGLE needs "
                              "--speculative-draft-model-path (NEXTN uses the MTP head)")
        for flag, value in zip(("--speculative-num-steps", "--speculative-eagle-topk",
                                "--speculative-num-draft-tokens"), sizes):
            _positive(flag, value)
        self._check_draft_tokens()

    @property
    def enabled(self) -> bool:
        return self.algorithm is not None

    @property
    def steps(self) -> int:
        return self.num_steps or DEFAULT_STEPS

    @property
    def topk(self) -> int:
        return self.eagle_topk or DEFAULT_TOPK

    @property
    def max_draft_tokens(self) -> int:
        """The largest draft tree (root included) that steps and topk can build."""
        k = self.topk
        return self.steps + 1 if k == 1 else 1 + k + (self.steps - 1) * k * k

    @property
    def draft_tokens(self) -> int:
        """Tokens verified per request and step, root included."""
        return self.num_draft_tokens or self.max_draft_tokens

    @property
    def draft_scratch(self) -> int:
        """Draft nodes the head runs past the last known position: the frontier of topk
        nodes at each of steps - 1 expansions (one scratch KV page each)."""
        return self.topk * (self.steps - 1)

    def _check_draft_tokens(self) -> None:
        given, most = self.num_draft_tokens, self.max_draft_tokens
        if given is None:
            return
        if self.topk == 1 and given != most:
            raise ConfigError(f"--speculative-num-draft-tokens {given} must be "
                              f"--speculative-num-steps + 1 = {most} when "
                              "--speculative-eagle-topk is 1 (a chain)")
        if not 2 <= given <= most:
            raise ConfigError(f"--speculative-num-draft-tokens {given} must lie in [2, {most}] "
                              f"for {self.steps} steps of top-{self.topk}")
