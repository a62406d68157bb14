"""The drafter: the checkpoint's MTP head (`models/qwen3_next_mtp.py`; NEXTN, or with EAGLE the
same head from a draft checkpoint) proposing a draft chain or tree per sequence from its most
likely tokens (deterministic proposals: acceptance then reproduces the target's own draws
exactly, see `spec_accept.py`; trees: `spec_tree.py`).

The head at position j reads (token j + 1, the target's final hidden state at j) and predicts
token j + 2; it keeps K/V for its one attention layer in its own pool, addressed by the
target's page ids. `extend` runs it over positions whose target hidden states are known (a
prompt chunk, or a verify's kept path) so its cache follows the sequence; a prompt chunk's last
position waits for the next chunk's first token (its hidden state is held until then). After
the last known position it drafts: the head's top-k tokens, then steps - 1 expansions of the
frontier, each feeding the head its own hidden state back; each node it runs writes K/V to a
scratch page of its own (the last topk * (steps - 1) pages the scheduler reserved). Proposals
stay here, keyed by sequence id, until the next verify.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qnext.worker.config import Config
from qnext.worker.runtime.inputs import SeqChunk, build_forward_batch
from qnext.worker.runtime.model_runner import build_mtp, make_pools
from qnext.worker.runtime.spec_tree import DraftTree


@dataclass
class Extend:
    """Run the head at positions start .. start + len(tokens) - 1: tokens[i] is the token
    after position start + i, hidden[i] the target's hidden state there; `draft` proposes
    after the last one."""

    seq_id: int
    start: int
    tokens: list[int]
    hidden: torch.Tensor
    page_ids: list[int]
    draft: bool


class MTPDrafter:
    def __init__(self, cfg: Config, target: torch.nn.Module) -> None:
        self.head = build_mtp(cfg)
        self.embed, self.lm_head = target.model.embed_tokens, target.lm_head
        spec = cfg.spec
        self.topk, self.steps, self.k = spec.topk, spec.steps, spec.draft_tokens - 1
        self.scratch, self.vocab = spec.draft_scratch, cfg.model.vocab_size
        self.device = torch.device(cfg.load.device)
        self.kv_pool = None
        self.proposed: dict[int, tuple[list[int], list[int]]] = {}
        self.held: dict[int, torch.Tensor] = {}  # seq_id -> hidden of its last prompt position

    def allocate(self, cfg: Config, num_pages: int) -> None:
        """A one-layer KV pool over the target's page ids (the plan counts its bytes)."""
        self.kv_pool = None
        self.kv_pool = make_pools(cfg, num_pages, 1, num_kv_layers=1)[0]
        self.proposed.clear()
        self.held.clear()

    def release(self, seq_ids) -> None:
        for seq_id in seq_ids:
            self.proposed.pop(seq_id, None)
            self.held.pop(seq_id, None)

    def proposals(self, seq_id: int) -> tuple[list[int] | torch.Tensor, list[int]]:
        """(tokens, parents) of the k proposals for `seq_id`: tree nodes 1..k (a host list, or
        a device row for chains drafted on the device), parents as tree indices (0: the root).
        A sequence that never drafted proposes a chain of token 0s (simply rejected)."""
        return self.proposed.pop(seq_id, None) or ([0] * self.k, list(range(self.k)))

    def propose_chains(self, seq_ids: list[int], chains: torch.Tensor) -> None:
        """Chains [B, k] drafted on the device (`spec_chain.py`) become the proposals."""
        parents = list(range(self.k))
        for b, seq_id in enumerate(seq_ids):
            self.proposed[seq_id] = (chains[b], parents)

    def prompt_chunk(self, seq_id: int, start: int, tokens: list[int], hidden: torch.Tensor,
                     page_ids: list[int], sampled: int | None) -> Extend | None:
        """The `Extend` of a prompt chunk at start.. with its target hidden states [m, H]
        (`sampled`: the token drawn after it, when the chunk ends the prompt); holds the last
        hidden state otherwise. None when there is nothing to run yet."""
        held = self.held.pop(seq_id, None)
        if held is not None and start > 0:
            start, tokens, hidden = start - 1, list(tokens), torch.cat([held[None], hidden])
        else:
            tokens = list(tokens[1:])
        if sampled is None:
            self.held[seq_id] = hidden[-1].clone()
            hidden = hidden[:-1]
        else:
            tokens.append(sampled)
        if not tokens:
            return None
        return Extend(seq_id, start, tokens, hidden[:len(tokens)], page_ids, sampled is not None)

    @torch.inference_mode()
    def extend(self, items: list[Extend], state_pool) -> None:
        """One head forward over every item, then drafting for those that ask."""
        if not items:
            return
        chunks = [SeqChunk(it.tokens, it.start, 0, it.page_ids) for it in items]
        batch = build_forward_batch(chunks, self.kv_pool, state_pool, self.device)
        logits, hidden = self.head(batch, torch.cat([it.hidden for it in items]), self.embed,
                                   self.lm_head)
        rows = [i for i, it in enumerate(items) if it.draft]
        if rows:
            last = batch.cu_seqlens[1:][rows] - 1
            self._draft([items[i] for i in rows], logits[rows], hidden[last], state_pool)

    def _draft(self, items: list[Extend], logits: torch.Tensor, hidden: torch.Tensor,
               state_pool) -> None:
        trees = [DraftTree() for _ in items]
        known = [it.page_ids[:it.start + len(it.tokens)] for it in items]
        logps, tokens = self._top(logits)
        for tree, lp, tok in zip(trees, logps, tokens):
            tree.frontier = [tree.add(t, -1, score) for t, score in zip(tok, lp)]
        hidden = hidden.repeat_interleave(self.topk, dim=0)  # one row per frontier node
        for step in range(self.steps - 1):
            chunks = []
            for it, tree, pages in zip(items, trees, known):
                for j, node in enumerate(tree.frontier):
                    tree.pages[node] = it.page_ids[len(it.page_ids) - self.scratch
                                                   + step * self.topk + j]
                    chunks.append(SeqChunk([tree.tokens[node]], len(pages) - 1 +
                                           tree.depths[node], 0, tree.page_table(node, pages)))
            batch = build_forward_batch(chunks, self.kv_pool, state_pool, self.device)
            logits, out = self.head(batch, hidden, self.embed, self.lm_head)
            logps, tokens = self._top(logits)
            rows = []
            for b, tree in enumerate(trees):
                span = slice(b * self.topk, (b + 1) * self.topk)
                rows += [b * self.topk + j
                         for j in tree.expand(tokens[span], logps[span], self.topk)]
            hidden = out[rows]
        for it, tree in zip(items, trees):
            self.proposed[it.seq_id] = tree.select(self.k)

    def _top(self, logits: torch.Tensor) -> tuple[list[list[float]], list[list[int]]]:
        """Per row, the topk log-probabilities and tokens of the head's distribution."""
        logp = torch.log_softmax(logits[:, :self.vocab].float(), dim=-1)
        values, ids = logp.topk(self.topk, dim=-1)
        return values.tolist(), ids.tolist()
