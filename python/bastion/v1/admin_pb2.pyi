from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReloadPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadPolicyResponse(_message.Message):
    __slots__ = ("policy_digest", "tenants", "principals")
    POLICY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    PRINCIPALS_FIELD_NUMBER: _ClassVar[int]
    policy_digest: str
    tenants: int
    principals: int
    def __init__(self, policy_digest: _Optional[str] = ..., tenants: _Optional[int] = ..., principals: _Optional[int] = ...) -> None: ...

class ListTenantsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TenantStatus(_message.Message):
    __slots__ = ("tenant", "max_tokens_per_request", "max_concurrent_streams", "requests_per_s", "tokens_per_min", "kv_reserved_blocks", "kv_max_blocks", "active_streams", "requests", "denied", "rate_limited", "prompt_tokens", "completion_tokens")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_STREAMS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_S_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_MIN_FIELD_NUMBER: _ClassVar[int]
    KV_RESERVED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    KV_MAX_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_STREAMS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    DENIED_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITED_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    max_tokens_per_request: int
    max_concurrent_streams: int
    requests_per_s: float
    tokens_per_min: int
    kv_reserved_blocks: int
    kv_max_blocks: int
    active_streams: int
    requests: int
    denied: int
    rate_limited: int
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, tenant: _Optional[str] = ..., max_tokens_per_request: _Optional[int] = ..., max_concurrent_streams: _Optional[int] = ..., requests_per_s: _Optional[float] = ..., tokens_per_min: _Optional[int] = ..., kv_reserved_blocks: _Optional[int] = ..., kv_max_blocks: _Optional[int] = ..., active_streams: _Optional[int] = ..., requests: _Optional[int] = ..., denied: _Optional[int] = ..., rate_limited: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class ListTenantsResponse(_message.Message):
    __slots__ = ("policy_digest", "tenants")
    POLICY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    policy_digest: str
    tenants: _containers.RepeatedCompositeFieldContainer[TenantStatus]
    def __init__(self, policy_digest: _Optional[str] = ..., tenants: _Optional[_Iterable[_Union[TenantStatus, _Mapping]]] = ...) -> None: ...

class RevokeApiKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class RevokeApiKeyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelState(_message.Message):
    __slots__ = ("name", "digest", "state", "release", "subject_digest", "attestation")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    digest: str
    state: str
    release: str
    subject_digest: str
    attestation: str
    def __init__(self, name: _Optional[str] = ..., digest: _Optional[str] = ..., state: _Optional[str] = ..., release: _Optional[str] = ..., subject_digest: _Optional[str] = ..., attestation: _Optional[str] = ...) -> None: ...

class ModelStatusResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelState]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelState, _Mapping]]] = ...) -> None: ...

class ReloadAttestationsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadAttestationsResponse(_message.Message):
    __slots__ = ("files", "rejected", "models")
    FILES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    files: int
    rejected: int
    models: _containers.RepeatedCompositeFieldContainer[ModelState]
    def __init__(self, files: _Optional[int] = ..., rejected: _Optional[int] = ..., models: _Optional[_Iterable[_Union[ModelState, _Mapping]]] = ...) -> None: ...

class CheckDriftRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DriftStatus(_message.Message):
    __slots__ = ("model", "status", "delta", "tolerance", "noise_floor", "baseline_digest", "checks", "alerts", "seconds")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    NOISE_FLOOR_FIELD_NUMBER: _ClassVar[int]
    BASELINE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    status: str
    delta: float
    tolerance: float
    noise_floor: float
    baseline_digest: str
    checks: int
    alerts: int
    seconds: float
    def __init__(self, model: _Optional[str] = ..., status: _Optional[str] = ..., delta: _Optional[float] = ..., tolerance: _Optional[float] = ..., noise_floor: _Optional[float] = ..., baseline_digest: _Optional[str] = ..., checks: _Optional[int] = ..., alerts: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class CheckDriftResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[DriftStatus]
    def __init__(self, models: _Optional[_Iterable[_Union[DriftStatus, _Mapping]]] = ...) -> None: ...

class LiftQuarantineRequest(_message.Message):
    __slots__ = ("model", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class LiftQuarantineResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelState]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelState, _Mapping]]] = ...) -> None: ...

class ResetDriftBaselineRequest(_message.Message):
    __slots__ = ("model", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ResetDriftBaselineResponse(_message.Message):
    __slots__ = ("drift",)
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    drift: DriftStatus
    def __init__(self, drift: _Optional[_Union[DriftStatus, _Mapping]] = ...) -> None: ...
