from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SandboxStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SANDBOX_STATUS_UNSPECIFIED: _ClassVar[SandboxStatus]
    SANDBOX_STATUS_STARTING: _ClassVar[SandboxStatus]
    SANDBOX_STATUS_RUNNING: _ClassVar[SandboxStatus]
    SANDBOX_STATUS_PAUSED: _ClassVar[SandboxStatus]
    SANDBOX_STATUS_ERROR: _ClassVar[SandboxStatus]
SANDBOX_STATUS_UNSPECIFIED: SandboxStatus
SANDBOX_STATUS_STARTING: SandboxStatus
SANDBOX_STATUS_RUNNING: SandboxStatus
SANDBOX_STATUS_PAUSED: SandboxStatus
SANDBOX_STATUS_ERROR: SandboxStatus

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PingResponse(_message.Message):
    __slots__ = ("version", "runtime", "cpu_cores", "memory_mb", "disk_gb", "arch", "pool", "capabilities")
    class PoolEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    DISK_GB_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    version: str
    runtime: str
    cpu_cores: int
    memory_mb: int
    disk_gb: int
    arch: str
    pool: _containers.ScalarMap[str, int]
    capabilities: Capabilities
    def __init__(self, version: _Optional[str] = ..., runtime: _Optional[str] = ..., cpu_cores: _Optional[int] = ..., memory_mb: _Optional[int] = ..., disk_gb: _Optional[int] = ..., arch: _Optional[str] = ..., pool: _Optional[_Mapping[str, int]] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("pause_with_memory", "snapshot", "hardware_acceleration", "disk_size_limit", "checkpoint_keeps_connections", "guest_sees_vcpus", "guest_kernel", "memory_file", "restores", "layered_files", "guest_capabilities_limited")
    PAUSE_WITH_MEMORY_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_ACCELERATION_FIELD_NUMBER: _ClassVar[int]
    DISK_SIZE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_KEEPS_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    GUEST_SEES_VCPUS_FIELD_NUMBER: _ClassVar[int]
    GUEST_KERNEL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FILE_FIELD_NUMBER: _ClassVar[int]
    RESTORES_FIELD_NUMBER: _ClassVar[int]
    LAYERED_FILES_FIELD_NUMBER: _ClassVar[int]
    GUEST_CAPABILITIES_LIMITED_FIELD_NUMBER: _ClassVar[int]
    pause_with_memory: bool
    snapshot: bool
    hardware_acceleration: bool
    disk_size_limit: bool
    checkpoint_keeps_connections: bool
    guest_sees_vcpus: bool
    guest_kernel: bool
    memory_file: bool
    restores: _containers.RepeatedScalarFieldContainer[str]
    layered_files: bool
    guest_capabilities_limited: bool
    def __init__(self, pause_with_memory: _Optional[bool] = ..., snapshot: _Optional[bool] = ..., hardware_acceleration: _Optional[bool] = ..., disk_size_limit: _Optional[bool] = ..., checkpoint_keeps_connections: _Optional[bool] = ..., guest_sees_vcpus: _Optional[bool] = ..., guest_kernel: _Optional[bool] = ..., memory_file: _Optional[bool] = ..., restores: _Optional[_Iterable[str]] = ..., layered_files: _Optional[bool] = ..., guest_capabilities_limited: _Optional[bool] = ...) -> None: ...

class SandboxRef(_message.Message):
    __slots__ = ("sandbox_id",)
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    def __init__(self, sandbox_id: _Optional[str] = ...) -> None: ...

class CreateSandboxRequest(_message.Message):
    __slots__ = ("sandbox_id", "template", "template_id", "team_id", "vcpus", "memory_mb", "timeout_sec", "disk_size_mb", "default_user", "default_env")
    class DefaultEnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SEC_FIELD_NUMBER: _ClassVar[int]
    DISK_SIZE_MB_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_USER_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_ENV_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    template: str
    template_id: str
    team_id: str
    vcpus: int
    memory_mb: int
    timeout_sec: int
    disk_size_mb: int
    default_user: str
    default_env: _containers.ScalarMap[str, str]
    def __init__(self, sandbox_id: _Optional[str] = ..., template: _Optional[str] = ..., template_id: _Optional[str] = ..., team_id: _Optional[str] = ..., vcpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., timeout_sec: _Optional[int] = ..., disk_size_mb: _Optional[int] = ..., default_user: _Optional[str] = ..., default_env: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SandboxInfo(_message.Message):
    __slots__ = ("sandbox_id", "status", "host_ip", "metadata", "error", "disk_used_bytes")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HOST_IP_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DISK_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    status: SandboxStatus
    host_ip: str
    metadata: _containers.ScalarMap[str, str]
    error: str
    disk_used_bytes: int
    def __init__(self, sandbox_id: _Optional[str] = ..., status: _Optional[_Union[SandboxStatus, str]] = ..., host_ip: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., error: _Optional[str] = ..., disk_used_bytes: _Optional[int] = ...) -> None: ...

class ListSandboxesResponse(_message.Message):
    __slots__ = ("sandboxes", "auto_paused_sandbox_ids")
    SANDBOXES_FIELD_NUMBER: _ClassVar[int]
    AUTO_PAUSED_SANDBOX_IDS_FIELD_NUMBER: _ClassVar[int]
    sandboxes: _containers.RepeatedCompositeFieldContainer[SandboxInfo]
    auto_paused_sandbox_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sandboxes: _Optional[_Iterable[_Union[SandboxInfo, _Mapping]]] = ..., auto_paused_sandbox_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ExecRequest(_message.Message):
    __slots__ = ("sandbox_id", "cmd", "args", "envs", "cwd", "user", "tag", "timeout_sec", "stdin", "pty")
    class EnvsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    CMD_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ENVS_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SEC_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    PTY_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    cmd: str
    args: _containers.RepeatedScalarFieldContainer[str]
    envs: _containers.ScalarMap[str, str]
    cwd: str
    user: str
    tag: str
    timeout_sec: float
    stdin: bool
    pty: PtySize
    def __init__(self, sandbox_id: _Optional[str] = ..., cmd: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., envs: _Optional[_Mapping[str, str]] = ..., cwd: _Optional[str] = ..., user: _Optional[str] = ..., tag: _Optional[str] = ..., timeout_sec: _Optional[float] = ..., stdin: _Optional[bool] = ..., pty: _Optional[_Union[PtySize, _Mapping]] = ...) -> None: ...

class PtySize(_message.Message):
    __slots__ = ("cols", "rows")
    COLS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    cols: int
    rows: int
    def __init__(self, cols: _Optional[int] = ..., rows: _Optional[int] = ...) -> None: ...

class ExecResponse(_message.Message):
    __slots__ = ("pid", "exit_code", "stdout", "stderr", "duration_ms", "end_reason")
    PID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    pid: int
    exit_code: int
    stdout: bytes
    stderr: bytes
    duration_ms: int
    end_reason: str
    def __init__(self, pid: _Optional[int] = ..., exit_code: _Optional[int] = ..., stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., duration_ms: _Optional[int] = ..., end_reason: _Optional[str] = ...) -> None: ...

class BackgroundResponse(_message.Message):
    __slots__ = ("pid", "tag")
    PID_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    pid: int
    tag: str
    def __init__(self, pid: _Optional[int] = ..., tag: _Optional[str] = ...) -> None: ...

class ProcessRef(_message.Message):
    __slots__ = ("sandbox_id", "pid", "tag")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    pid: int
    tag: str
    def __init__(self, sandbox_id: _Optional[str] = ..., pid: _Optional[int] = ..., tag: _Optional[str] = ...) -> None: ...

class ProcessInfo(_message.Message):
    __slots__ = ("pid", "tag", "cmd", "args")
    PID_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    CMD_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    pid: int
    tag: str
    cmd: str
    args: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pid: _Optional[int] = ..., tag: _Optional[str] = ..., cmd: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ...) -> None: ...

class ListProcessesResponse(_message.Message):
    __slots__ = ("processes",)
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    processes: _containers.RepeatedCompositeFieldContainer[ProcessInfo]
    def __init__(self, processes: _Optional[_Iterable[_Union[ProcessInfo, _Mapping]]] = ...) -> None: ...

class KillProcessRequest(_message.Message):
    __slots__ = ("process", "signal")
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    process: ProcessRef
    signal: str
    def __init__(self, process: _Optional[_Union[ProcessRef, _Mapping]] = ..., signal: _Optional[str] = ...) -> None: ...

class SendInputRequest(_message.Message):
    __slots__ = ("process", "data")
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    process: ProcessRef
    data: bytes
    def __init__(self, process: _Optional[_Union[ProcessRef, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ResizeRequest(_message.Message):
    __slots__ = ("process", "cols", "rows")
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    process: ProcessRef
    cols: int
    rows: int
    def __init__(self, process: _Optional[_Union[ProcessRef, _Mapping]] = ..., cols: _Optional[int] = ..., rows: _Optional[int] = ...) -> None: ...

class ProcessEvent(_message.Message):
    __slots__ = ("start", "stdout", "stderr", "pty", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    PTY_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: ProcessStart
    stdout: bytes
    stderr: bytes
    pty: bytes
    end: ProcessEnd
    def __init__(self, start: _Optional[_Union[ProcessStart, _Mapping]] = ..., stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., pty: _Optional[bytes] = ..., end: _Optional[_Union[ProcessEnd, _Mapping]] = ...) -> None: ...

class ProcessStart(_message.Message):
    __slots__ = ("pid", "tag")
    PID_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    pid: int
    tag: str
    def __init__(self, pid: _Optional[int] = ..., tag: _Optional[str] = ...) -> None: ...

class ProcessEnd(_message.Message):
    __slots__ = ("exit_code", "end_reason")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    end_reason: str
    def __init__(self, exit_code: _Optional[int] = ..., end_reason: _Optional[str] = ...) -> None: ...

class PathRequest(_message.Message):
    __slots__ = ("sandbox_id", "path")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    path: str
    def __init__(self, sandbox_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class WriteFileChunk(_message.Message):
    __slots__ = ("meta", "data", "end")
    META_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    meta: PathRequest
    data: bytes
    end: Empty
    def __init__(self, meta: _Optional[_Union[PathRequest, _Mapping]] = ..., data: _Optional[bytes] = ..., end: _Optional[_Union[Empty, _Mapping]] = ...) -> None: ...

class FileEntry(_message.Message):
    __slots__ = ("name", "path", "type", "size", "mode", "permissions", "owner", "group", "modified_at", "symlink_target")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PERMISSIONS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_AT_FIELD_NUMBER: _ClassVar[int]
    SYMLINK_TARGET_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    type: str
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_at: int
    symlink_target: str
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., type: _Optional[str] = ..., size: _Optional[int] = ..., mode: _Optional[int] = ..., permissions: _Optional[str] = ..., owner: _Optional[str] = ..., group: _Optional[str] = ..., modified_at: _Optional[int] = ..., symlink_target: _Optional[str] = ...) -> None: ...

class ListDirRequest(_message.Message):
    __slots__ = ("sandbox_id", "path", "depth")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    path: str
    depth: int
    def __init__(self, sandbox_id: _Optional[str] = ..., path: _Optional[str] = ..., depth: _Optional[int] = ...) -> None: ...

class ListDirResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[FileEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[FileEntry, _Mapping]]] = ...) -> None: ...

class MetricsRequest(_message.Message):
    __slots__ = ("sandbox_id", "range")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    range: str
    def __init__(self, sandbox_id: _Optional[str] = ..., range: _Optional[str] = ...) -> None: ...

class MetricPoint(_message.Message):
    __slots__ = ("timestamp_unix", "cpu_pct", "mem_bytes", "disk_bytes")
    TIMESTAMP_UNIX_FIELD_NUMBER: _ClassVar[int]
    CPU_PCT_FIELD_NUMBER: _ClassVar[int]
    MEM_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    timestamp_unix: int
    cpu_pct: float
    mem_bytes: int
    disk_bytes: int
    def __init__(self, timestamp_unix: _Optional[int] = ..., cpu_pct: _Optional[float] = ..., mem_bytes: _Optional[int] = ..., disk_bytes: _Optional[int] = ...) -> None: ...

class MetricsResponse(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[MetricPoint]
    def __init__(self, points: _Optional[_Iterable[_Union[MetricPoint, _Mapping]]] = ...) -> None: ...

class FlushMetricsResponse(_message.Message):
    __slots__ = ("points_10m", "points_2h", "points_24h")
    POINTS_10M_FIELD_NUMBER: _ClassVar[int]
    POINTS_2H_FIELD_NUMBER: _ClassVar[int]
    POINTS_24H_FIELD_NUMBER: _ClassVar[int]
    points_10m: _containers.RepeatedCompositeFieldContainer[MetricPoint]
    points_2h: _containers.RepeatedCompositeFieldContainer[MetricPoint]
    points_24h: _containers.RepeatedCompositeFieldContainer[MetricPoint]
    def __init__(self, points_10m: _Optional[_Iterable[_Union[MetricPoint, _Mapping]]] = ..., points_2h: _Optional[_Iterable[_Union[MetricPoint, _Mapping]]] = ..., points_24h: _Optional[_Iterable[_Union[MetricPoint, _Mapping]]] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("sandbox_id", "team_id", "template_id")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    team_id: str
    template_id: str
    def __init__(self, sandbox_id: _Optional[str] = ..., team_id: _Optional[str] = ..., template_id: _Optional[str] = ...) -> None: ...

class TemplateRef(_message.Message):
    __slots__ = ("team_id", "template_id")
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    team_id: str
    template_id: str
    def __init__(self, team_id: _Optional[str] = ..., template_id: _Optional[str] = ...) -> None: ...

class TemplateInfo(_message.Message):
    __slots__ = ("size_bytes", "runtime")
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    size_bytes: int
    runtime: str
    def __init__(self, size_bytes: _Optional[int] = ..., runtime: _Optional[str] = ...) -> None: ...
