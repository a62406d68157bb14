"""Tensor parallelism in the engine: one process per rank, rank 0 drives.

Rank 0 (the engine's process) spawns the other ranks of its node; on more nodes (`--nnodes`),
`run_node` on each other node spawns that node's ranks, which meet rank 0 at `--dist-init-addr`.
Every rank builds its shard of the model and its pools; rank 0's scheduler plans each step and
sends the plan (plain ints) to the followers — through a shared-memory ring on one node
(`command_ring.py`), over a gloo group across nodes or when a command outgrows a slot; every
rank runs the same forward (the layers' collectives pair up) and samples the same tokens
(identical logits, counter-based randomness), so the overlap loop's on-device token feedback
works on every rank. Memory planning (a collective minimum over ranks) and pool (re)allocation
are broadcast commands too, so reconfiguration covers every rank.

Followers exit when rank 0 says so or when their parent process is gone. Rank 0 watches its
followers: one that exits unasked takes the whole worker down (exit code 1) instead of leaving
rank 0 with a broken group, so a supervisor can restart the worker.
"""

from __future__ import annotations

import atexit
import datetime
import os
import socket
import sys
import threading
from dataclasses import replace
from multiprocessing.connection import wait as wait_for_exit

import structlog
import torch.distributed as dist
import torch.multiprocessing as mp

from qnext.worker.config import Config
from qnext.worker.engine.command_ring import RingReader, RingSpec, RingWriter
from qnext.worker.layers.parallel import init_distributed, reset_tp_info
from qnext.worker.runtime.model_runner import ModelRunner
from qnext.worker.runtime.spec_worker import SpecExecutor
from qnext.worker.runtime.worker import Launched, PlanExecutor
from qnext.worker.sched.memory import MemoryPlan
from qnext.worker.sched.plan import StepPlan

log = structlog.get_logger()
_CTX = mp.get_context("spawn")
FOREVER = datetime.timedelta(days=365)  # followers idle between requests without a timeout
RANK_DIED = 1  # the worker's exit code when a follower exits unasked


def rank_config(cfg: Config, rank: int) -> Config:
    """A rank's view of the config: cuda devices are one per rank of a node."""
    if not cfg.load.device.startswith("cuda"):
        return cfg
    local = rank % cfg.parallel.ranks_per_node
    return replace(cfg, load=replace(cfg.load, device=f"cuda:{local}"))


def _init_address(cfg: Config) -> str:
    addr = cfg.parallel.dist_init_addr
    return f"tcp://{addr}" if addr else f"tcp://127.0.0.1:{_free_port()}"


def _spawn(cfg: Config, ranks, address: str, ring: RingSpec | None = None) -> list:
    """Start follower processes for `ranks`; they exit with this process. `ring`: node 0's
    command ring (follower rank r reads as reader r - 1)."""
    procs = [_CTX.Process(target=follower_main, daemon=True,
                          args=(rank, cfg.parallel.tp_size, address, cfg, os.getpid(), ring))
             for rank in ranks]
    for proc in procs:
        proc.start()
    return procs


class TPExecutor(PlanExecutor):
    """Rank 0's executor: every command is broadcast to the followers, then run here."""

    def __init__(self, runner: ModelRunner, group, procs: list,
                 stopping: threading.Event, ring: RingWriter | None = None) -> None:
        super().__init__(runner, runner.cfg.model.eos_token_ids)
        self.group, self.procs, self.stopping, self.ring = group, procs, stopping, ring

    def send(self, *command) -> None:
        if self.ring is None or not self.ring.put(command):
            dist.broadcast_object_list([command], src=0, group=self.group)

    def plan_memory(self, cfg: Config, strategy: str, overlap: bool) -> MemoryPlan:
        self.send("plan", cfg, strategy, overlap)
        return super().plan_memory(cfg, strategy, overlap)

    def install_pools(self, cfg: Config, plan: MemoryPlan) -> None:
        self.send("install", cfg, plan)
        super().install_pools(cfg, plan)

    def warm_up(self, max_tokens: int | None = None) -> int:
        self.send("warmup", max_tokens)
        return super().warm_up(max_tokens)

    def launch(self, plan: StepPlan, previous: Launched | None = None) -> Launched:
        self.send("launch", plan, previous.plan.step_id if previous else None)
        return super().launch(plan, previous)

    def close(self) -> None:
        """Stop the followers and leave the process group (this process may start another)."""
        self.stopping.set()  # their exits from here on are asked for
        self.send("stop")
        super().close()  # graphs first: they hold the NCCL communicator
        # NOTE: destroy before joining: with symmetric memory set up, a follower's
        # destroy_process_group returns only once rank 0 destroys too
        dist.destroy_process_group()
        for proc in self.procs:
            proc.join(timeout=60)
        if self.ring is not None:
            self.ring.close()
        reset_tp_info()


class TPSpecExecutor(TPExecutor, SpecExecutor):
    """Rank 0's executor with speculative decoding: commands broadcast (TPExecutor), steps
    launched by SpecExecutor on every rank."""


def start_tp(cfg: Config) -> TPExecutor:
    """Spawn this node's followers, join the group as rank 0, build rank 0's runner."""
    if cfg.parallel.node_rank != 0:
        raise ValueError("the engine runs on node 0; other nodes call run_node")
    address = _init_address(cfg)
    ranks = cfg.parallel.local_ranks[1:]
    # every follower on this node: the ring; with other nodes, gloo for all
    ring = RingWriter.create(_CTX, len(ranks)) if cfg.parallel.nnodes == 1 and ranks else None
    procs, stopping = _spawn(cfg, ranks, address, ring and ring.spec), threading.Event()
    _exit_with_followers(dict(zip(ranks, procs)), stopping)
    init_distributed(0, cfg.parallel.tp_size, address, rank_config(cfg, 0).load.device,
                     custom_all_reduce=not cfg.parallel.disable_custom_all_reduce)
    group = dist.new_group(backend="gloo", timeout=FOREVER)
    if ring is not None:
        ring.unlink()  # the followers opened it before joining the group
    cls = TPSpecExecutor if cfg.spec.enabled else TPExecutor
    return cls(ModelRunner(rank_config(cfg, 0)), group, procs, stopping, ring)


def run_node(cfg: Config) -> int:
    """A node other than 0: run its ranks until rank 0 stops them; 0 when all exited cleanly."""
    if cfg.parallel.node_rank == 0:
        raise ValueError("node 0 runs the engine, not run_node")
    procs = _spawn(cfg, cfg.parallel.local_ranks, _init_address(cfg))
    for proc in procs:
        proc.join()
    return max(abs(proc.exitcode or 0) for proc in procs)


def follower_main(rank: int, size: int, address: str, cfg: Config, parent: int,
                  ring: RingSpec | None = None) -> None:
    """Ranks 1..tp-1: follow rank 0's commands until "stop"."""
    from qnext.worker.log import configure_like_parent

    configure_like_parent()  # stderr, at the parent's level
    _exit_with_parent(parent)
    reader = RingReader(ring, rank - 1) if ring is not None else None  # before joining
    cfg = rank_config(cfg, rank)
    init_distributed(rank, size, address, cfg.load.device,
                     custom_all_reduce=not cfg.parallel.disable_custom_all_reduce)
    group = dist.new_group(backend="gloo", timeout=FOREVER)
    executor = (SpecExecutor if cfg.spec.enabled else PlanExecutor)(ModelRunner(cfg),
                                                                     cfg.model.eos_token_ids)
    if not cfg.spec.enabled:  # plain steps are resolved by rank 0 alone
        executor.downloads_outputs = False
    last: Launched | None = None  # the overlap loop's `previous` is always the last launch
    while True:
        kind, *args = _next_command(reader, group)
        if kind == "stop":
            executor.close()
            break
        if kind == "plan":
            executor.plan_memory(rank_config(args[0], rank), *args[1:])
        elif kind == "install":
            executor.install_pools(rank_config(args[0], rank), args[1])
        elif kind == "warmup":
            executor.warm_up(*args)
        elif kind == "launch":
            plan, previous = args
            if previous is not None:
                assert last is not None and last.plan.step_id == previous, "plans out of step"
            last = executor.launch(plan, last if previous is not None else None)
    dist.destroy_process_group()
    # NOTE: skip interpreter finalization: gloo's worker threads can still hold tensors then,
    # and tearing them down sometimes aborts the process (SIGABRT) after a clean stop
    sys.stderr.flush()
    os._exit(0)


def _next_command(reader: RingReader | None, group) -> tuple:
    command = reader.get() if reader is not None else None
    if command is None:  # no ring, or this one came over gloo
        box = [None]
        dist.broadcast_object_list(box, src=0, group=group)
        command = box[0]
    return command


def _exit_with_parent(parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(1.0)  # polling: a dead parent sends no event
        os._exit(0)
    threading.Thread(target=watch, daemon=True).start()


def _exit_with_followers(procs: dict, stopping: threading.Event) -> None:
    """Exit this process (code RANK_DIED) as soon as a follower (`procs`: rank -> process)
    exits before `stopping` is set: rank 0 would otherwise fail or wait forever in its next
    collective with it."""
    def watch() -> None:
        ready = wait_for_exit([proc.sentinel for proc in procs.values()])
        if stopping.is_set():
            return
        rank, proc = next((r, p) for r, p in procs.items() if p.sentinel in ready)
        log.error("tp_rank_exited", rank=rank, pid=proc.pid, exit_code=proc.exitcode)
        sys.stderr.flush()
        os._exit(RANK_DIED)  # NOTE: from a thread: the engine thread may be inside gloo
    if procs:
        atexit.register(stopping.set)  # before multiprocessing's atexit terminates them
        threading.Thread(target=watch, name="tp-followers", daemon=True).start()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

