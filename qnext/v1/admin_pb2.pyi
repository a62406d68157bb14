from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RadixStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RADIX_STRATEGY_UNSPECIFIED: _ClassVar[RadixStrategy]
    RADIX_STRATEGY_OFF: _ClassVar[RadixStrategy]
    RADIX_STRATEGY_NO_BUFFER: _ClassVar[RadixStrategy]
    RADIX_STRATEGY_EXTRA_BUFFER: _ClassVar[RadixStrategy]
RADIX_STRATEGY_UNSPECIFIED: RadixStrategy
RADIX_STRATEGY_OFF: RadixStrategy
RADIX_STRATEGY_NO_BUFFER: RadixStrategy
RADIX_STRATEGY_EXTRA_BUFFER: RadixStrategy

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PrefixCacheStats(_message.Message):
    __slots__ = ("strategy", "hit_rate", "prompt_tokens", "cached_tokens", "inserted_tokens", "evicted_pages", "evicted_slots")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    INSERTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EVICTED_PAGES_FIELD_NUMBER: _ClassVar[int]
    EVICTED_SLOTS_FIELD_NUMBER: _ClassVar[int]
    strategy: str
    hit_rate: float
    prompt_tokens: int
    cached_tokens: int
    inserted_tokens: int
    evicted_pages: int
    evicted_slots: int
    def __init__(self, strategy: _Optional[str] = ..., hit_rate: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., inserted_tokens: _Optional[int] = ..., evicted_pages: _Optional[int] = ..., evicted_slots: _Optional[int] = ...) -> None: ...

class Stats(_message.Message):
    __slots__ = ("num_running", "num_waiting", "num_requests", "num_finished", "num_generated_tokens", "num_steps", "num_preemptions", "generation_throughput", "prefix_cache", "draining", "spec_accept_length", "spec_accept_rate")
    NUM_RUNNING_FIELD_NUMBER: _ClassVar[int]
    NUM_WAITING_FIELD_NUMBER: _ClassVar[int]
    NUM_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    NUM_FINISHED_FIELD_NUMBER: _ClassVar[int]
    NUM_GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_STEPS_FIELD_NUMBER: _ClassVar[int]
    NUM_PREEMPTIONS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_THROUGHPUT_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    SPEC_ACCEPT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    SPEC_ACCEPT_RATE_FIELD_NUMBER: _ClassVar[int]
    num_running: int
    num_waiting: int
    num_requests: int
    num_finished: int
    num_generated_tokens: int
    num_steps: int
    num_preemptions: int
    generation_throughput: float
    prefix_cache: PrefixCacheStats
    draining: bool
    spec_accept_length: float
    spec_accept_rate: float
    def __init__(self, num_running: _Optional[int] = ..., num_waiting: _Optional[int] = ..., num_requests: _Optional[int] = ..., num_finished: _Optional[int] = ..., num_generated_tokens: _Optional[int] = ..., num_steps: _Optional[int] = ..., num_preemptions: _Optional[int] = ..., generation_throughput: _Optional[float] = ..., prefix_cache: _Optional[_Union[PrefixCacheStats, _Mapping]] = ..., draining: _Optional[bool] = ..., spec_accept_length: _Optional[float] = ..., spec_accept_rate: _Optional[float] = ...) -> None: ...

class GetMemoryRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PoolUsage(_message.Message):
    __slots__ = ("total", "used", "cached", "evictable", "free")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    EVICTABLE_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    total: int
    used: int
    cached: int
    evictable: int
    free: int
    def __init__(self, total: _Optional[int] = ..., used: _Optional[int] = ..., cached: _Optional[int] = ..., evictable: _Optional[int] = ..., free: _Optional[int] = ...) -> None: ...

class MemoryInfo(_message.Message):
    __slots__ = ("strategy", "page_size", "mamba_full_memory_ratio", "kv_pool_bytes", "state_pool_bytes", "state_bytes_per_slot", "kv_bytes_per_token", "max_total_tokens", "max_running_requests", "pages", "state_slots")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAMBA_FULL_MEMORY_RATIO_FIELD_NUMBER: _ClassVar[int]
    KV_POOL_BYTES_FIELD_NUMBER: _ClassVar[int]
    STATE_POOL_BYTES_FIELD_NUMBER: _ClassVar[int]
    STATE_BYTES_PER_SLOT_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MAX_TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNNING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    STATE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    strategy: str
    page_size: int
    mamba_full_memory_ratio: float
    kv_pool_bytes: int
    state_pool_bytes: int
    state_bytes_per_slot: int
    kv_bytes_per_token: int
    max_total_tokens: int
    max_running_requests: int
    pages: PoolUsage
    state_slots: PoolUsage
    def __init__(self, strategy: _Optional[str] = ..., page_size: _Optional[int] = ..., mamba_full_memory_ratio: _Optional[float] = ..., kv_pool_bytes: _Optional[int] = ..., state_pool_bytes: _Optional[int] = ..., state_bytes_per_slot: _Optional[int] = ..., kv_bytes_per_token: _Optional[int] = ..., max_total_tokens: _Optional[int] = ..., max_running_requests: _Optional[int] = ..., pages: _Optional[_Union[PoolUsage, _Mapping]] = ..., state_slots: _Optional[_Union[PoolUsage, _Mapping]] = ...) -> None: ...

class SetRadixStrategyRequest(_message.Message):
    __slots__ = ("strategy",)
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    strategy: RadixStrategy
    def __init__(self, strategy: _Optional[_Union[RadixStrategy, str]] = ...) -> None: ...

class ResizeMambaCacheRequest(_message.Message):
    __slots__ = ("ratio", "num_slots", "dry_run")
    RATIO_FIELD_NUMBER: _ClassVar[int]
    NUM_SLOTS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    ratio: float
    num_slots: int
    dry_run: bool
    def __init__(self, ratio: _Optional[float] = ..., num_slots: _Optional[int] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class ResizeMambaCacheResponse(_message.Message):
    __slots__ = ("memory", "applied")
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    memory: MemoryInfo
    applied: bool
    def __init__(self, memory: _Optional[_Union[MemoryInfo, _Mapping]] = ..., applied: _Optional[bool] = ...) -> None: ...

class FlushCacheRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FlushCacheResponse(_message.Message):
    __slots__ = ("freed_pages", "freed_slots")
    FREED_PAGES_FIELD_NUMBER: _ClassVar[int]
    FREED_SLOTS_FIELD_NUMBER: _ClassVar[int]
    freed_pages: int
    freed_slots: int
    def __init__(self, freed_pages: _Optional[int] = ..., freed_slots: _Optional[int] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DrainResponse(_message.Message):
    __slots__ = ("num_unfinished",)
    NUM_UNFINISHED_FIELD_NUMBER: _ClassVar[int]
    num_unfinished: int
    def __init__(self, num_unfinished: _Optional[int] = ...) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResumeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("model_path", "architecture", "version", "versions", "config_json", "device")
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    model_path: str
    architecture: str
    version: str
    versions: _containers.ScalarMap[str, str]
    config_json: str
    device: str
    def __init__(self, model_path: _Optional[str] = ..., architecture: _Optional[str] = ..., version: _Optional[str] = ..., versions: _Optional[_Mapping[str, str]] = ..., config_json: _Optional[str] = ..., device: _Optional[str] = ...) -> None: ...

class SetLogLevelRequest(_message.Message):
    __slots__ = ("level",)
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    level: str
    def __init__(self, level: _Optional[str] = ...) -> None: ...

class SetLogLevelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CheckIntegrityRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CheckIntegrityResponse(_message.Message):
    __slots__ = ("ok", "message", "idle", "pages", "state_slots")
    OK_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    IDLE_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    STATE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    message: str
    idle: bool
    pages: PoolUsage
    state_slots: PoolUsage
    def __init__(self, ok: _Optional[bool] = ..., message: _Optional[str] = ..., idle: _Optional[bool] = ..., pages: _Optional[_Union[PoolUsage, _Mapping]] = ..., state_slots: _Optional[_Union[PoolUsage, _Mapping]] = ...) -> None: ...
