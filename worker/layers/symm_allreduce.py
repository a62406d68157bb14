"""Small-message all-reduce for tensor parallelism over torch symmetric memory: each rank copies
its message into a buffer that its peers map (P2P over NVLink), then one kernel on every rank
reads all ranks' copies and sums them in rank order (torch's one-shot all-reduce,
`torch.ops.symm_mem`). No host sync and no allocation per call, so CUDA graphs capture it.
NVLink multicast stays off: no multimem op is used and TORCH_SYMM_MEM_DISABLE_MULTICAST=1.
NCCL (`dist.all_reduce`) is the reference, and the path for every other message.

Contiguous bf16 messages take a barrier-free one-shot kernel instead (`kernels/allreduce.py`:
each rank pushes into its peers' buffers, lanes flag their own arrival): one launch, no
copy-in, no signal-pad round trips; and `add_rms_norm` fuses the residual add and RMSNorm
that follow a layer's all-reduce into it (`kernels/allreduce_norm.py`). On by default since
it passed every TP test on 2 and 4 GPUs and cut a TP4 batch-1 step from 3.61 to 2.97 ms
(4 x H200, docs/perf/serving.md); QNEXT_LAMPORT_ALLREDUCE=0 keeps torch's one-shot kernel
for all (tests/gpu/test_gpu_allreduce.py runs both paths).
"""

from __future__ import annotations

import os
import re
import socket
import sys

import torch
import torch.distributed as dist

try:
    import structlog

    _log = structlog.get_logger(__name__)
except ImportError:  # NOTE: the bare GPU image (test and benchmark runs) may lack structlog
    _log = None

MAX_BYTES = 512 << 10  # the largest message taken: decode activations (tokens x hidden x 2 B)
DTYPES = (torch.bfloat16, torch.float32)  # what torch's one-shot kernel dispatches on
ALIGN = 16  # bytes: the kernel's widest vector; other messages go through a padded copy
# NOTE: torch keeps symmetric-memory state per group name for the life of the process, and a
# process group made again after destroy_process_group reuses the name, so a second rendezvous
# in one process waits forever for keys its fresh peers never write (seen on 2xH200, torch
# 2.11). One setup per process, then: later groups of the same process take NCCL.
_set_up_in_process = False


def multicast_off() -> None:
    """Keep NVLink multicast (NVLS) out of NCCL and symmetric memory: it can take shared GPUs
    out of service. Call before the process group and any symmetric-memory allocation."""
    os.environ["NCCL_NVLS_ENABLE"] = "0"
    os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"


class SymmAllReduce:
    """In-place sum over the ranks of `group` for the CUDA messages that `fits` accepts.

    Every rank must make the same calls in the same order (as with NCCL); every rank gets the
    same bits (ranks are summed in rank order). The constructor is collective (rendezvous);
    `create_symm_all_reduce` builds one on every rank or on none.

    NOTE: the copy-in is a kernel of its own. torch's fused variant
    (`one_shot_all_reduce_copy_out`) signals its peers without a block barrier after the
    copy-in, so a peer may read a warp's part before it is written."""

    def __init__(self, group: dist.ProcessGroup, device: torch.device,
                 max_bytes: int = MAX_BYTES) -> None:
        import torch.distributed._symmetric_memory as symm_mem

        if max_bytes <= 0 or max_bytes % ALIGN:
            raise ValueError(f"max_bytes {max_bytes} must be a positive multiple of {ALIGN}")
        multicast_off()
        _register_group(symm_mem, group)
        self.group_name = group.group_name
        self.max_bytes = max_bytes
        self.buffer = symm_mem.empty(max_bytes, dtype=torch.uint8, device=device).zero_()
        self.handle = symm_mem.rendezvous(self.buffer, group.group_name)  # peers map it
        self.staging = torch.zeros(max_bytes, dtype=torch.uint8, device=device)  # padded sums
        self.multicast = bool(getattr(self.handle, "multicast_ptr", 0))
        self.lamport = _Lamport(symm_mem, group, device, max_bytes) \
            if os.environ.get("QNEXT_LAMPORT_ALLREDUCE", "1") != "0" else None
        global _set_up_in_process
        _set_up_in_process = True

    def fits(self, x: torch.Tensor) -> bool:
        """Whether `all_reduce` takes x: a non-empty CUDA bf16 / fp32 tensor of at most
        `max_bytes` once padded to 16 bytes."""
        return (x.is_cuda and x.dtype in DTYPES and x.numel() > 0
                and _padded_numel(x) * x.element_size() <= self.max_bytes)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place; returns `x`. Needs `fits(x)`."""
        if self.lamport is not None and self.lamport.takes(x):
            return self.lamport.all_reduce(x)
        if _aligned(x):
            self._direct(x.view(-1))
        else:
            self._padded(x)
        return x

    def add_rms_norm(self, x, residual: torch.Tensor, weight: torch.Tensor, eps: float):
        """(rms_norm(sum + residual), sum + residual) in one kernel, where sum is x summed over
        the ranks (x is not changed; it may also be the `ExpertRows` of a MoE, summed per token
        in the same kernel); None where that kernel does not take it (the barrier-free path is
        off, or the message is not a contiguous bf16 [T, H] that fits)."""
        if self.lamport is None or residual.dim() != 2 or not residual.is_contiguous() \
                or not self.lamport.takes(residual):
            return None
        if isinstance(x, torch.Tensor) and (x.dtype != residual.dtype or not self.lamport.takes(x)):
            return None
        return self.lamport.add_rms_norm(x, residual, weight, eps)

    def _peer_view(self, dtype: torch.dtype, numel: int) -> torch.Tensor:
        return self.buffer.view(dtype)[:numel]  # storage offset 0: 16-byte aligned

    def _direct(self, flat: torch.Tensor) -> None:
        """A contiguous, 16-byte aligned message: copy in, reduce straight into it."""
        peer = self._peer_view(flat.dtype, flat.numel())
        peer.copy_(flat)
        torch.ops.symm_mem.one_shot_all_reduce_out(peer, "sum", self.group_name, flat)

    def _padded(self, x: torch.Tensor) -> None:
        """Any other message (odd sizes, strides, offsets): reduce a copy padded to 16 bytes
        (the pad lanes hold stale values and are never read back), copy the sum back."""
        n, m = x.numel(), _padded_numel(x)
        peer = self._peer_view(x.dtype, m)
        out = self.staging.view(x.dtype)[:m]
        peer[:n].view(x.shape).copy_(x)
        torch.ops.symm_mem.one_shot_all_reduce_out(peer, "sum", self.group_name, out)
        x.copy_(out[:n].view(x.shape))


class _Lamport:
    """The barrier-free path's buffer (symmetric memory, every lane empty before any peer can
    push), the peers' addresses and the per-program call state."""

    def __init__(self, symm_mem, group: dist.ProcessGroup, device: torch.device,
                 max_bytes: int) -> None:
        from qnext.kernels.allreduce import empty_buffer, new_state

        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.cap = max_bytes // 2
        buffer = symm_mem.empty(3 * self.world * self.cap, dtype=torch.bfloat16, device=device)
        self.buffer = empty_buffer(buffer)
        torch.cuda.synchronize(device)  # emptied before the (collective) rendezvous returns
        handle = symm_mem.rendezvous(self.buffer, group.group_name)
        self.peers = torch.tensor(list(handle.buffer_ptrs), dtype=torch.int64, device=device)
        self.state = new_state(device)

    def takes(self, x: torch.Tensor) -> bool:
        return x.dtype == torch.bfloat16 and x.is_contiguous() and x.numel() <= self.cap

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        from qnext.kernels.allreduce import lamport_all_reduce

        return lamport_all_reduce(x, x, self.peers, self.state, self.rank, self.world, self.cap)

    def add_rms_norm(self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                     eps: float):
        from qnext.kernels.allreduce_norm import lamport_all_reduce_add_rms_norm

        return lamport_all_reduce_add_rms_norm(x, residual, weight, eps, self.peers,
                                               self.state, self.rank, self.world, self.cap)


def create_symm_all_reduce(group: dist.ProcessGroup, device: torch.device,
                           max_bytes: int = MAX_BYTES) -> SymmAllReduce | None:
    """Collective over `group`: a `SymmAllReduce` on every rank, or None on every rank (NCCL
    then takes every all-reduce) with one log line saying why."""
    size = dist.get_world_size(group)
    views: list = [None] * size
    dist.all_gather_object(views, (socket.gethostname(), _obstacle(group, device)), group=group)
    reasons = [reason for _, reason in views if reason]
    if len({host for host, _ in views}) > 1:
        reasons.append("the ranks are on several hosts")
    if reasons:
        return _off(group, reasons[0])
    try:
        fast, error = SymmAllReduce(group, device, max_bytes), None
    except Exception as exc:  # noqa: BLE001  (any failure means: use NCCL, on every rank)
        fast, error = None, f"{type(exc).__name__}: {exc}"
    errors: list = [None] * size
    dist.all_gather_object(errors, error, group=group)
    if any(errors):
        return _off(group, "symmetric memory setup failed: " + next(e for e in errors if e))
    _note(group, "custom_all_reduce", enabled=True, max_bytes=max_bytes,
          multicast=fast.multicast, torch=torch.__version__)
    return fast


def _obstacle(group: dist.ProcessGroup, device: torch.device) -> str | None:
    """Why this rank cannot use symmetric memory, or None."""
    if device.type != "cuda":
        return f"device {device} is not CUDA"
    if _set_up_in_process:
        return "a rank set symmetric memory up before in its process (one setup per process)"
    backend = str(dist.get_backend(group))
    if "nccl" not in backend:
        return f"process group backend {backend} is not NCCL"
    if not _has_op("one_shot_all_reduce_out"):
        return f"torch {torch.__version__} has no symmetric-memory one-shot all-reduce"
    local = torch.cuda.current_device() if device.index is None else device.index
    for other in range(torch.cuda.device_count()):
        if other != local and not torch.cuda.can_device_access_peer(local, other):
            return f"no P2P access from cuda:{local} to cuda:{other}"
    return None


def _has_op(name: str) -> bool:
    try:
        import torch.distributed._symmetric_memory  # noqa: F401  (absent in old torch)

        getattr(torch.ops.symm_mem, name)
    except (ImportError, AttributeError, RuntimeError):
        return False
    return True


def _register_group(symm_mem, group: dist.ProcessGroup) -> None:
    """torch < 2.11 needs the group registered for symmetric memory; 2.11 deprecates that."""
    enable = getattr(symm_mem, "enable_symm_mem_for_group", None)
    major_minor = tuple(int(p) for p in re.findall(r"\d+", torch.__version__)[:2])
    if enable is not None and major_minor < (2, 11):
        enable(group.group_name)


def _aligned(x: torch.Tensor) -> bool:
    """Contiguous, 16-byte aligned start (pointer and storage offset) and 16-byte size."""
    size = x.element_size()
    return (x.is_contiguous() and x.numel() * size % ALIGN == 0
            and x.data_ptr() % ALIGN == 0 and x.storage_offset() * size % ALIGN == 0)


def _padded_numel(x: torch.Tensor) -> int:
    per = ALIGN // x.element_size()
    return -(-x.numel() // per) * per


def _off(group: dist.ProcessGroup, reason: str) -> None:
    _note(group, "custom_all_reduce", enabled=False, reason=reason)
    return None


def _note(group: dist.ProcessGroup, event: str, **fields) -> None:
    """One log line, from the group's first rank."""
    if dist.get_rank(group) != 0:
        return
    if _log is not None:
        _log.info(event, **fields)
    else:
        print(event, " ".join(f"{k}={v}" for k, v in fields.items()), file=sys.stderr)
