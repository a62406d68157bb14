"""Reading checkpoint shards in parallel: one thread per shard (up to `workers`) streams its
tensors into a bounded queue that the loader drains in the caller's thread, so reads of
several files overlap (safetensors reads release the GIL) while host memory stays bounded by
the queue. Progress (tensors and bytes, tqdm on stderr when it is a terminal) and a closing
log line with the read rate. A failing shard raises CheckpointError naming the file; a caller
that stops early (a bad tensor) stops the readers too.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog
import torch
from safetensors import safe_open

log = structlog.get_logger(__name__)
_DONE = object()


class CheckpointError(ValueError):
    """The checkpoint does not match the model; the message names the tensor."""


def _read_shard(file: Path, out: queue.Queue, stop: threading.Event) -> None:
    """Put (name, tensor) of one shard, then _DONE (or the error), unless stopped."""
    try:
        with safe_open(str(file), framework="pt") as reader:
            for name in reader.keys():
                if stop.is_set():
                    return
                _put(out, (name, reader.get_tensor(name)), stop)
        _put(out, _DONE, stop)
    except Exception as exc:  # safetensors raises its own error types
        _put(out, CheckpointError(f"cannot read {file.name}: {exc}"), stop)


def _put(out: queue.Queue, item, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def read_shards(files: list[Path], workers: int = 4,
                progress: bool | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield every (name, tensor) of `files`; order within a shard kept, shards interleaved.

    workers: shards read at once (1 = one after the other); progress: None = when stderr is
    a terminal."""
    from tqdm import tqdm

    stop, out = threading.Event(), queue.Queue(maxsize=64)
    bar = tqdm(total=len(files), unit="shard", desc="loading weights", disable=progress is False
               if progress is not None else None, leave=False)
    start, nbytes, pending = time.perf_counter(), 0, len(files)
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(files))),
                              thread_name_prefix="qnext-shard")
    try:
        for file in files:
            pool.submit(_read_shard, file, out, stop)
        while pending:
            item = out.get()
            if item is _DONE:
                pending -= 1
                bar.update(1)
            elif isinstance(item, Exception):
                raise item
            else:
                nbytes += item[1].numel() * item[1].element_size()
                yield item
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    seconds = time.perf_counter() - start
    log.info("weights.read", shards=len(files), gib=round(nbytes / 2**30, 3),
             seconds=round(seconds, 2), gib_per_s=round(nbytes / 2**30 / max(seconds, 1e-9), 2))
