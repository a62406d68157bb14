"""What `qnext-admin` prints: aligned key/value lines, the pool table, byte units, and the
`--json` document. Pure functions from Admin messages to strings; no grpc, no torch."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_POOL_COLUMNS = ("total", "used", "cached", "evictable", "free")


def to_json(message: Any) -> str:
    """One JSON document: proto field names, fields at their zero value included, keys sorted
    (64-bit integers are strings, as the proto JSON mapping says)."""
    from google.protobuf.json_format import MessageToDict

    data = MessageToDict(message, preserving_proto_field_name=True,
                         always_print_fields_with_no_presence=True)
    return json.dumps(data, indent=2, sort_keys=True)


def human_bytes(num_bytes: int) -> str:
    """1536 -> "1.50 KiB"; whole bytes below 1 KiB."""
    value = float(num_bytes)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{num_bytes} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def key_values(rows: Sequence[tuple[str, object]]) -> str:
    """Two aligned columns: the label, then its value."""
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain text table: first column left-aligned, the others right-aligned."""
    cells = [list(map(str, header))] + [list(map(str, row)) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for row in cells:
        first = f"{row[0]:<{widths[0]}}"
        rest = [f"{cell:>{width}}" for cell, width in zip(row[1:], widths[1:])]
        lines.append("  ".join([first, *rest]))
    return "\n".join(lines)


def format_stats(stats: Any) -> str:
    """A `Stats` message: queues, counters, throughput and the prefix cache."""
    cache = stats.prefix_cache
    rows: list[tuple[str, object]] = [
        ("running", stats.num_running),
        ("waiting", stats.num_waiting),
        ("requests", stats.num_requests),
        ("finished", stats.num_finished),
        ("tokens", stats.num_generated_tokens),
        ("steps", stats.num_steps),
        ("preemptions", stats.num_preemptions),
        ("throughput", f"{stats.generation_throughput:.1f} tok/s"),
        ("hit rate", f"{cache.hit_rate * 100:.1f}% ({cache.cached_tokens} of "
                     f"{cache.prompt_tokens} prompt tokens)"),
        ("strategy", cache.strategy or "-"),
        ("inserted", f"{cache.inserted_tokens} tokens"),
        ("evicted", f"{cache.evicted_pages} pages, {cache.evicted_slots} state slots"),
        ("draining", "yes" if stats.draining else "no"),
    ]
    if stats.HasField("spec_accept_length"):
        rows.append(("spec accept", f"{stats.spec_accept_length:.2f} tokens/verify, "
                                    f"{stats.spec_accept_rate * 100:.1f}% of drafts"))
    return key_values(rows)


def format_memory(memory: Any) -> str:
    """A `MemoryInfo` message: the plan, then a pages / state-slots usage table."""
    plan = key_values([
        ("strategy", memory.strategy or "-"),
        ("page size", f"{memory.page_size} tokens"),
        ("ratio", f"{memory.mamba_full_memory_ratio:g}"),
        ("kv pool", f"{human_bytes(memory.kv_pool_bytes)} ({memory.max_total_tokens} tokens, "
                    f"{human_bytes(memory.kv_bytes_per_token)}/token)"),
        ("state pool", human_bytes(memory.state_pool_bytes)),
        ("state per slot", human_bytes(memory.state_bytes_per_slot)),
        ("max running", f"{memory.max_running_requests} requests"),
    ])
    return f"{plan}\n\n{_pools(memory)}"


def _pools(message: Any) -> str:
    """The pages / state-slots usage table of a message with `pages` and `state_slots`."""
    return table(("pool", *_POOL_COLUMNS), [
        ("pages", *(getattr(message.pages, c) for c in _POOL_COLUMNS)),
        ("state slots", *(getattr(message.state_slots, c) for c in _POOL_COLUMNS)),
    ])


def format_integrity(response: Any) -> str:
    """A `CheckIntegrityResponse`: ok or the violation, which checks ran, the pool table."""
    status = "ok" if response.ok else f"VIOLATION: {response.message}"
    scope = ("allocators, prefix cache, and idle: nothing held outside the cache"
             if response.idle else "allocators and prefix cache (requests were running)")
    return f"{key_values([('integrity', status), ('checked', scope)])}\n\n{_pools(response)}"


def format_resize(response: Any) -> str:
    """A `ResizeMambaCacheResponse`: applied or not, then the (planned) memory."""
    head = "applied" if response.applied else "dry run: not applied"
    return f"{head}\n\n{format_memory(response.memory)}"


def format_flush(response: Any) -> str:
    """A `FlushCacheResponse`: what went back to the pools."""
    return f"freed {response.freed_pages} pages, {response.freed_slots} state slots"


def format_info(info: Any) -> str:
    """A `ServerInfo` message: model, device, versions, then the configuration JSON."""
    rows: list[tuple[str, object]] = [
        ("model", info.model_path or "-"),
        ("architecture", info.architecture or "-"),
        ("version", info.version or "-"),
        ("device", info.device or "-"),
    ]
    rows += [(name, info.versions[name]) for name in sorted(info.versions)]
    text = key_values(rows)
    return f"{text}\n\nconfig:\n{_pretty_json(info.config_json)}" if info.config_json else text


def _pretty_json(text: str) -> str:
    """Indented JSON, or the text as it came when it is not JSON."""
    try:
        return json.dumps(json.loads(text), indent=2, sort_keys=True)
    except ValueError:
        return text
