"""Draft trees of the NEXTN drafter (topk K, steps s, N draft tokens with the root): the
bookkeeping of one sequence's candidates, and the selection of the tree that is verified.

Step 1 takes the K most likely tokens after the root; each later step expands the K frontier
nodes by their K most likely children and keeps the K children of highest cumulative
log-probability as the next frontier. Every generated node is a candidate; the tree verified
is the N - 1 candidates of highest cumulative score (a child never scores above its parent,
and ties go to the older node, so the selection is closed under ancestors), in generation
order, with parents re-indexed to tree positions (0 = the root). K = 1 is a chain.

Every frontier node the head runs gets its own scratch KV page (page size 1): a node's page
table is the sequence's pages up to the last known position, then its ancestors' pages, then
its own — branches never see each other's K/V.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DraftTree:
    """One sequence's candidates: token, parent candidate (-1: the root), cumulative score,
    depth (1 = a child of the root), and the scratch page of each candidate the head ran."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    pages: dict[int, int] = field(default_factory=dict)
    frontier: list[int] = field(default_factory=list)

    def add(self, token: int, parent: int, score: float) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        self.scores.append(score)
        self.depths.append(1 if parent < 0 else self.depths[parent] + 1)
        return len(self.tokens) - 1

    def ancestors(self, node: int) -> list[int]:
        """node's ancestors from depth 1 down, then node itself."""
        chain = []
        while node >= 0:
            chain.append(node)
            node = self.parents[node]
        return chain[::-1]

    def page_table(self, node: int, known: list[int]) -> list[int]:
        """Pages of the head's forward at `node`: the sequence's `known` pages (positions up
        to the last known one), then one scratch page per node of its chain."""
        return known + [self.pages[a] for a in self.ancestors(node)]

    def select(self, count: int) -> tuple[list[int], list[int]]:
        """(tokens, parents) of the verified tree without its root: the `count` best
        candidates in generation order, parents as tree indices (root 0, nodes 1..count)."""
        order = sorted(range(len(self.tokens)), key=lambda i: (-self.scores[i], i))
        chosen = sorted(order[:count])
        index = {node: t + 1 for t, node in enumerate(chosen)}
        return ([self.tokens[i] for i in chosen],
                [index[self.parents[i]] if self.parents[i] >= 0 else 0 for i in chosen])

    def expand(self, tokens: list[list[int]], logps: list[list[float]], k: int) -> list[int]:
        """Add the children (tokens[j], with log-probs logps[j]) of each frontier node j;
        returns the frontier positions of the parents of the k best new nodes, which become
        the frontier."""
        new = [(self.add(t, node, self.scores[node] + lp), j)
               for j, node in enumerate(self.frontier) for t, lp in zip(tokens[j], logps[j])]
        best = sorted(new, key=lambda c: (-self.scores[c[0]], c[0]))[:k]
        self.frontier = [node for node, _ in best]
        return [j for _, j in best]
