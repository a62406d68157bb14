"""Chain drafting (topk 1) right after a verify, on the device: no host sync between the
verify and the next proposals.

The head first runs over the verify's own layout — every sequence's n verify positions, the
target's hidden states there, and as the token after position t the emitted token t (the
kept proposals, then the bonus token) — so its K/V follows the kept tokens. The rows past a
sequence's kept tokens write K/V at positions that are not known yet; nothing reads them
before the next extend rewrites them (a draft step reads the known positions and its own
scratch pages only), and their pages are still the sequence's during this step. The head's
output at the last kept position proposes the first draft token (argmax); each further step
runs the head at that draft's position with its own hidden state, K/V into the step's scratch
page, through page tables built on the device. `MTPDrafter._draft` does the same on the host
(and is what trees and prompt chunks use); this module is its chain case without `.tolist()`.
On CUDA, `DraftGraphs` replays the whole of it as one graph per batch size after a graphed
verify.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from qnext.worker.forward import ForwardBatch
from qnext.worker.runtime.cuda_graph import SizeGraphs, StepGraphs
from qnext.worker.runtime.spec_draft import MTPDrafter


@torch.inference_mode()
def draft_chains(drafter: MTPDrafter, verify: ForwardBatch, hidden: torch.Tensor,
                 emitted: torch.Tensor, kept: torch.Tensor,
                 page_lens: torch.Tensor) -> torch.Tensor:
    """Extend the head over a chain verify and draft the next chains; returns them [B, steps].
    verify: the verify batch (B sequences of n tokens); hidden [B * n, H] its final hidden
    states; emitted [B, n] the accepted tokens then the bonus (-1 after); kept [B] the accepted
    counts; page_lens [B] each sequence's page count (scratch pages last)."""
    num_seqs, n = emitted.shape
    rows = torch.arange(num_seqs, device=kept.device) * n + kept
    ext = replace(verify, input_ids=emitted.clamp_min(0).reshape(-1), logits_indices=rows,
                  kv_cache=drafter.kv_pool, spec_states=None, spec_parents=None)
    logits, out = drafter.head(ext, hidden, drafter.embed, drafter.lm_head)
    token, state = _argmax(logits, drafter.vocab), out[rows]
    drafts = [token]
    known = verify.seq_lens - n + kept + 1  # positions known after this verify
    for depth in range(1, drafter.steps):
        step = _step_batch(verify, drafter, token, known, page_lens, depth)
        logits, state = drafter.head(step, state, drafter.embed, drafter.lm_head)
        token = _argmax(logits, drafter.vocab)
        drafts.append(token)
    return torch.stack(drafts, dim=1)


class DraftGraphs:
    """`draft_chains` captured per batch size of a verify's graphs (`StepGraphs` with n > 1):
    it reads that graph's static inputs and hidden output in place, plus its own static
    emitted / kept / page-count rows (padding rows: nothing kept, page 0 as scratch). Run it
    right after the verify graph replayed for the same batch."""

    def __init__(self, verify: StepGraphs, drafter: MTPDrafter, eager: bool = False) -> None:
        max_bs, device = verify.sizes[-1], verify.static.input_ids.device
        self.verify, self.drafter = verify, drafter
        self.emitted = torch.zeros(max_bs, verify.n, dtype=torch.int64, device=device)
        self.kept = torch.zeros(max_bs, dtype=torch.int64, device=device)
        self.page_lens = torch.full_like(self.kept, drafter.scratch)
        self.captured = SizeGraphs(verify.sizes, self._draft, eager)

    def run(self, emitted: torch.Tensor, kept: torch.Tensor,
            page_lens: torch.Tensor) -> torch.Tensor:
        """The chains [B, steps] (a copy) after the verify graph's last replay of B rows."""
        bs = emitted.shape[0]
        padded = self.verify.padded_size(bs)
        self.emitted[:bs].copy_(emitted)
        self.kept[:bs].copy_(kept)
        self.page_lens[:bs].copy_(page_lens)
        self.emitted[bs:padded].zero_()
        self.kept[bs:padded].zero_()
        self.page_lens[bs:padded].fill_(self.drafter.scratch)
        return self.captured.replay(padded)[:bs].clone()

    def _draft(self, bs: int) -> torch.Tensor:
        verify = self.verify
        return draft_chains(self.drafter, verify.static_batch(bs), verify.captured.outputs[bs][1],
                            self.emitted[:bs], self.kept[:bs], self.page_lens[:bs])


def _argmax(logits: torch.Tensor, vocab: int) -> torch.Tensor:
    return logits[:, :vocab].argmax(dim=-1)


def _step_batch(verify: ForwardBatch, drafter: MTPDrafter, token: torch.Tensor,
                known: torch.Tensor, page_lens: torch.Tensor, depth: int) -> ForwardBatch:
    """The head's forward at the draft of `depth` (1 = the first draft token) of every
    chain: position known - 1 + depth, pages = the known positions' pages then the scratch
    pages of depths 1..depth (page size 1)."""
    table = verify.page_table
    cols = torch.arange(table.shape[1], device=table.device)[None, :]
    scratch0 = (page_lens - drafter.scratch)[:, None]  # column of the depth-1 scratch page
    source = torch.where(cols < known[:, None], cols, scratch0 + cols - known[:, None])
    inside = cols < (known + depth)[:, None]
    pages = torch.where(inside, table.gather(1, source.clamp(0, table.shape[1] - 1)), 0)
    num_seqs = token.shape[0]
    arange = torch.arange(num_seqs + 1, device=token.device)
    return ForwardBatch(
        input_ids=token, positions=known - 1 + depth, cu_seqlens=arange,
        seq_lens=known + depth, state_slots=verify.state_slots,
        has_initial_state=verify.has_initial_state, page_table=pages,
        kv_locs=table.gather(1, scratch0 + depth - 1).squeeze(1), logits_indices=arange[:-1],
        is_decode=True, kv_cache=drafter.kv_pool, state_cache=verify.state_cache)
