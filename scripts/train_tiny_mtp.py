"""Train a tiny Qwen3-Next checkpoint whose MTP head predicts (issue 8): a script, not a test.

Corpus: this Python's standard-library sources (sorted *.py files; tests, idlelib and
installed packages left out; the last `--heldout` files are held out), tokenized with qnext's
tiny tokenizer. Phase 1 trains the trunk (transformers' `Qwen3NextForCausalLM`) on next-token
prediction; phase 2 freezes it and trains the `mtp.*` head (`MTPHead`, the math of
`worker/models/qwen3_next_mtp.py` in transformers' blocks) to predict token t + 2 from
(token t + 1, the trunk's final normed hidden state at t). Writes a full HF checkpoint directory.

    python scripts/train_tiny_mtp.py OUT [--device cpu|cuda] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
import sysconfig
import time
from pathlib import Path

import torch
from torch import nn

#: Path parts that put a stdlib file out of the corpus (installed packages, the test suite).
EXCLUDED_PARTS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib"})
#: Overrides of the "tiny" preset: twice as wide (the linear-attention heads stay at 16: wider
#: ones make transformers' CPU delta-rule reference several times slower).
MODEL_OVERRIDES = {"hidden_size": 128, "moe_intermediate_size": 64,
                   "shared_expert_intermediate_size": 64, "intermediate_size": 192}


# -- corpus ----------------------------------------------------------------------------------
def stdlib_files() -> list[Path]:
    """The standard library's *.py files in sorted (deterministic) order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(f for f in root.rglob("*.py")
                  if not EXCLUDED_PARTS & set(f.relative_to(root).parts))


def split_files(num_heldout: int) -> tuple[list[Path], list[Path]]:
    """(training files, held-out files): the last `num_heldout` files are held out."""
    files = stdlib_files()
    return files[:-num_heldout], files[-num_heldout:]


def load_tokenizer(directory: Path):
    """qnext's tiny tokenizer, written into `directory` (tokenizer.json) and loaded."""
    from tokenizers import Tokenizer

    from qnext.worker.tiny import build_tokenizer

    build_tokenizer(directory)
    return Tokenizer.from_file(str(directory / "tokenizer.json"))


def encode_files(tokenizer, files: list[Path]) -> list[list[int]]:
    """Each file's token ids (files that are not UTF-8 are skipped)."""
    texts = []
    for f in files:
        try:
            texts.append(f.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            continue
    return [e.ids for e in tokenizer.encode_batch(texts)]


def token_stream(docs: list[list[int]]) -> torch.Tensor:
    """All documents joined by <|endoftext|>: one long [N] int64 tensor."""
    from qnext.worker.tiny import ENDOFTEXT_ID

    out: list[int] = []
    for ids in docs:
        out += ids + [ENDOFTEXT_ID]
    return torch.tensor(out, dtype=torch.long)


def sample_windows(stream: torch.Tensor, batch: int, length: int,
                   gen: torch.Generator) -> torch.Tensor:
    """[batch, length] windows at random offsets of `stream` (drawn from `gen`)."""
    starts = torch.randint(0, stream.numel() - length, (batch,), generator=gen)
    return torch.stack([stream[s:s + length] for s in starts.tolist()])


# -- model -----------------------------------------------------------------------------------
def model_config(hidden_layers: int) -> dict:
    """The config.json dict: the "tiny" preset with `MODEL_OVERRIDES`."""
    from qnext.worker.tiny import preset_config

    hf = preset_config("tiny")
    hf.update(MODEL_OVERRIDES, num_hidden_layers=hidden_layers)
    return hf


class MTPHead(nn.Module):
    """The `mtp.*` head in transformers' blocks; parameter names are the checkpoint's without
    the `mtp.` prefix (experts stacked, as transformers keeps them)."""

    def __init__(self, hf: dict) -> None:
        super().__init__()
        from transformers import Qwen3NextConfig
        from transformers.models.qwen3_next.modeling_qwen3_next import (
            Qwen3NextDecoderLayer,
            Qwen3NextRMSNorm,
            Qwen3NextRotaryEmbedding,
        )

        # one decoder layer whose layer_types entry is full attention, MoE as the trunk's
        cfg = Qwen3NextConfig(**{**hf, "num_hidden_layers": 1,
                                 "layer_types": ["full_attention"], "mlp_only_layers": []})
        h, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.fc = nn.Linear(2 * h, h, bias=False)
        self.pre_fc_norm_embedding = Qwen3NextRMSNorm(h, eps)
        self.pre_fc_norm_hidden = Qwen3NextRMSNorm(h, eps)
        self.layers = nn.ModuleList([Qwen3NextDecoderLayer(cfg, 0)])
        self.norm = Qwen3NextRMSNorm(h, eps)
        self.rotary = Qwen3NextRotaryEmbedding(cfg)

    def forward(self, next_ids: torch.Tensor, hidden: torch.Tensor, embed: nn.Module,
                lm_head: nn.Module) -> torch.Tensor:
        """next_ids [B, L] (token t + 1) and hidden [B, L, H] (trunk at t) -> logits [B, L, V]
        for token t + 2; position t's RoPE position is t, as in qnext's drafter."""
        length = next_ids.shape[1]
        emb = self.pre_fc_norm_embedding(embed(next_ids))
        x = self.fc(torch.cat([emb, self.pre_fc_norm_hidden(hidden)], dim=-1))
        pos = torch.arange(length, device=x.device)[None]
        mask = torch.full((length, length), float("-inf"), device=x.device).triu(1)
        x = self.layers[0](x, position_embeddings=self.rotary(x, pos),
                           attention_mask=mask[None, None], position_ids=pos)
        return lm_head(self.norm(x))


def build_models(hf: dict, device: str, seed: int) -> tuple[nn.Module, MTPHead]:
    """(trunk, head), initialised by transformers' rules from `seed`."""
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    torch.manual_seed(seed)
    trunk = Qwen3NextForCausalLM(Qwen3NextConfig(**hf))
    head = MTPHead(hf)
    head.apply(trunk._init_weights)  # experts are allocated uninitialised
    return trunk.to(device), head.to(device)


# -- training --------------------------------------------------------------------------------
def lr_at(step: int, steps: int, peak: float, warmup: int = 30) -> float:
    """Linear warm-up, then cosine decay to 10 % of `peak`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    done = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * done)))


def mtp_loss(trunk: nn.Module, head: MTPHead, ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the head's token t + 2 given (ids[t + 1], trunk hidden at t)."""
    with torch.no_grad():
        hidden = trunk.model(input_ids=ids).last_hidden_state  # final normed: what qnext feeds
    logits = head(ids[:, 1:], hidden[:, :-1], trunk.model.embed_tokens, trunk.lm_head)
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 2:].flatten())


def train(name: str, params: list[nn.Parameter], loss_fn, stream: torch.Tensor,
          args: argparse.Namespace, steps: int) -> None:
    """AdamW over `params` for `steps` steps of `loss_fn(windows)`; prints progress."""
    gen = torch.Generator().manual_seed(args.seed + len(name))  # other windows per phase
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    start, total = time.perf_counter(), 0.0
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, args.lr)
        ids = sample_windows(stream, args.batch, args.seq_len, gen).to(args.device)
        loss = loss_fn(ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        total += loss.item()
        if (step + 1) % args.log_every == 0 or step + 1 == steps:
            print(f"{name} step {step + 1}/{steps} loss {total / args.log_every:.3f} "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
            total = 0.0


@torch.no_grad()
def evaluate(trunk: nn.Module, head: MTPHead, ids: torch.Tensor) -> dict[str, float]:
    """Held-out trunk loss, and how often the head's argmax for token t + 2 equals the
    trunk's own greedy choice there (the first draft's greedy acceptance, teacher-forced)."""
    out = trunk(input_ids=ids, labels=ids)
    hidden = trunk.model(input_ids=ids).last_hidden_state
    logits = head(ids[:, 1:], hidden[:, :-1], trunk.model.embed_tokens, trunk.lm_head)
    agree = logits[:, :-1].argmax(-1) == out.logits[:, 1:-1].argmax(-1)
    exact = logits[:, :-1].argmax(-1) == ids[:, 2:]
    return {"trunk_loss": out.loss.item(), "mtp_agrees_with_trunk": agree.float().mean().item(),
            "mtp_top1": exact.float().mean().item()}


# -- checkpoint ------------------------------------------------------------------------------
def checkpoint_names(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """transformers' parameter names -> checkpoint names (stacked experts split per expert)."""
    out = {}
    for name, t in state.items():
        t = t.detach().float().cpu().contiguous()
        if name.endswith("experts.gate_up_proj"):  # [E, 2I, H]: rows [gate | up]
            base, inter = name.removesuffix("gate_up_proj"), t.shape[1] // 2
            for e in range(t.shape[0]):
                out[f"{prefix}{base}{e}.gate_proj.weight"] = t[e, :inter].contiguous()
                out[f"{prefix}{base}{e}.up_proj.weight"] = t[e, inter:].contiguous()
        elif name.endswith("experts.down_proj"):  # [E, H, I]
            base = name.removesuffix("down_proj")
            for e in range(t.shape[0]):
                out[f"{prefix}{base}{e}.down_proj.weight"] = t[e].contiguous()
        else:
            out[prefix + name] = t
    return out


def write_checkpoint(out: Path, hf: dict, trunk: nn.Module, head: MTPHead) -> int:
    """config, generation config, tokenizer files and model.safetensors (trunk + mtp.*) in
    `out`; the tensor names and shapes must be exactly qnext's. Returns the directory's bytes."""
    from qnext.worker.tiny import generation_config, save_state_dict, tensor_specs

    state = checkpoint_names(trunk.state_dict())
    state.update(checkpoint_names(dict(head.named_parameters()), prefix="mtp."))
    want = {s.name: s.shape for s in tensor_specs(hf, with_mtp=True)}
    got = {name: tuple(t.shape) for name, t in state.items()}
    if got != want:
        raise RuntimeError(f"checkpoint names differ from qnext's: {set(got) ^ set(want)}")
    state = {name: state[name] for name in want}  # qnext's tensor order
    for file, obj in (("config.json", dict(sorted(hf.items()))),
                      ("generation_config.json", generation_config(hf))):
        (out / file).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    save_state_dict(out, state)
    return sum(f.stat().st_size for f in out.iterdir())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=4, help="trunk depth (every 4th full attn)")
    ap.add_argument("--trunk-steps", type=int, default=600)
    ap.add_argument("--mtp-steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--heldout", type=int, default=32, help="last N stdlib files held out")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (more fight other processes on a small machine)")
    ap.add_argument("--log-every", type=int, default=50)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(args.out)
    train_files, held_files = split_files(args.heldout)
    stream = token_stream(encode_files(tokenizer, train_files))
    held = token_stream(encode_files(tokenizer, held_files))
    print(f"corpus: {len(train_files)} files, {stream.numel()} tokens; held out "
          f"{len(held_files)} files, {held.numel()} tokens", flush=True)
    hf = model_config(args.layers)
    trunk, head = build_models(hf, args.device, args.seed)
    held_ids = sample_windows(held, 32, args.seq_len, torch.Generator().manual_seed(1))
    held_ids = held_ids.to(args.device)
    train("trunk", list(trunk.parameters()),
          lambda ids: trunk(input_ids=ids, labels=ids).loss, stream, args, args.trunk_steps)
    trunk.eval().requires_grad_(False)
    print("after trunk:", evaluate(trunk, head, held_ids), flush=True)
    train("mtp", list(head.parameters()), lambda ids: mtp_loss(trunk, head, ids), stream,
          args, args.mtp_steps)
    head.eval()
    print("after mtp:", evaluate(trunk, head, held_ids), flush=True)
    size = write_checkpoint(args.out, hf, trunk, head)
    print(f"wrote {args.out} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
