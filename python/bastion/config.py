"""One validated, frozen settings object, parsed once at start.

Sources, highest priority first: explicit overrides (CLI flags), environment variables
(``BASTION_<SECTION>__<FIELD>``, e.g. ``BASTION_SERVER__LISTEN``), the TOML file (``--config`` or
``BASTION_CONFIG``), then the secure defaults below. Unknown keys are refused. ``Settings.redacted()`` is
the only form that may be logged.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from bastion.assurance.settings import AssuranceSettings
from bastion.audit.settings import AuditSettings
from bastion.auth.settings import AuthSettings
from bastion.cluster.settings import ClusterSettings
from bastion.errors import ConfigError
from bastion.urls import check_service_url, is_loopback_host

_FROZEN = ConfigDict(frozen=True, extra="forbid")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bastion"


def parse_listen(value: str) -> tuple[str, str, int | None]:
    """Splits a listen address into (kind, host_or_path, port); kind is "unix" or "tcp"."""
    if value.startswith("unix:"):
        path = value[len("unix:") :]
        if not path:
            raise ValueError("unix: address needs a path")
        return "unix", path, None
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError("expected HOST:PORT or unix:PATH")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError("port must be an integer") from None
    if not 0 <= port <= 65535:
        raise ValueError("port must be 0..65535")
    return "tcp", host, port


def is_loopback(host: str) -> bool:
    """``localhost`` exactly or a loopback IP literal (``bastion.urls.is_loopback_host``)."""
    return is_loopback_host(host)


def require_tls_off_loopback(
    listen: str, tls_enabled: bool, listen_field: str, tls_field: str, or_else: str = ""
) -> None:
    """The rule every listener follows: a TCP address other than loopback only with TLS (``tls_field``'s
    cert_file and key_file); ValueError naming the fields otherwise. ``or_else``: the listener's other way out."""
    if not listen:
        return
    kind, host, _ = parse_listen(listen)
    if kind == "tcp" and not is_loopback(host) and not tls_enabled:
        raise ValueError(
            f"{listen_field} is not a loopback address: set {tls_field}.cert_file and key_file "
            f"(TLS is required on every non-loopback listener){or_else}"
        )


class TlsSettings(BaseModel):
    model_config = _FROZEN
    cert_file: Path | None = None
    key_file: Path | None = None
    # Client CA bundle: when set, clients must present a certificate it signed (mutual TLS).
    client_ca_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file must be set together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("tls.client_ca_file needs tls.cert_file and tls.key_file")
        return self


class ServerSettings(BaseModel):
    model_config = _FROZEN
    # Loopback by default. Any other TCP address requires TLS.
    listen: str = "127.0.0.1:50051"
    # Seconds in-flight streams may run after SIGTERM before they are aborted.
    grace_period_s: float = Field(default=20.0, ge=0.0, le=600.0)
    # gRPC message limits (bytes); explicit, never unlimited.
    max_receive_message_bytes: int = Field(default=1 << 20, ge=1024, le=16 << 20)
    max_send_message_bytes: int = Field(default=1 << 20, ge=1024, le=16 << 20)
    # HTTP/2 concurrent streams per connection.
    max_concurrent_streams: int = Field(default=256, ge=1, le=4096)
    # Connections the listener holds at once, those still in their TLS handshake included; beyond it a new one
    # is closed at once (each is a file descriptor of the process that also writes the audit log).
    max_connections: int = Field(default=1024, ge=1, le=65536)
    # Seconds a new connection has to finish its TLS handshake and HTTP/2 preface; then it is closed (gRPC's own
    # default is 120 s, long enough for a client that never sends a ClientHello to pile connections up).
    handshake_timeout_s: float = Field(default=10.0, gt=0.0, le=300.0)
    # Requests admitted at once (running + queued in the engine). Over it: RESOURCE_EXHAUSTED.
    max_inflight_requests: int = Field(default=128, ge=1, le=65536)
    # The fraction of max_inflight_requests one tenant may hold at once (at least one slot): past it the
    # tenant is refused (RESOURCE_EXHAUSTED) while others are admitted. 0.5: no tenant can starve the rest.
    tenant_admission_share: float = Field(default=0.5, gt=0.0, le=1.0)
    # Admission slots reserved for the server's own assurance probes (the red team's minimum per interval),
    # on top of max_inflight_requests: tenants never hold them, so a tenant flood cannot starve the red team.
    assurance_reserved_slots: int = Field(default=1, ge=1, le=64)
    # Seconds one Generate message may wait for the client to read (HTTP/2 flow control); past it the
    # stream is aborted and its admission slot, stream slot and engine request are released.
    stream_write_timeout_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    # Seconds a call may take to send its request message once its headers arrived (a call holds one of the
    # listener's concurrent-RPC slots meanwhile; anonymous calls are refused from their headers alone).
    request_read_timeout_s: float = Field(default=10.0, gt=0.0, le=300.0)
    # gRPC server reflection is not served: it would tell any client the API surface, and clients have the
    # committed descriptor set (python/bastion/v1/bastion_v1.binpb) or proto/. Only false is accepted.
    reflection: bool = False
    # The event loop the server runs on: "uvloop" (libuv's; less CPU per wake-up, timer and TLS record, what
    # vLLM's own server uses) or "asyncio" (the standard library's). Same behaviour, limits and timeouts.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    tls: TlsSettings = TlsSettings()

    @field_validator("reflection")
    @classmethod
    def _no_reflection(cls, v: bool) -> bool:
        if v:
            raise ValueError(
                "gRPC reflection is not served (a hardened server does not list its API to any client); point "
                "grpcurl or buf curl at python/bastion/v1/bastion_v1.binpb or at proto/ instead"
            )
        return v

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_listen(v)
        return v

    @model_validator(mode="after")
    def _tls_required(self) -> ServerSettings:
        require_tls_off_loopback(self.listen, self.tls.enabled, "server.listen", "server.tls")
        return self


class HealthSettings(BaseModel):
    """``[health]``: the health listener, a second gRPC server that serves only ``grpc.health.v1``, without
    credentials, for probes (``bastion.server.health_listener``). Its own concurrent-RPC limit, so no flood
    of probes takes a slot that authenticated calls on ``server.listen`` need. The Watch caps and lifetime
    apply on both listeners (on the main one, never above ``MAIN_WATCH_CAP`` in ``server/listener.py``)."""

    model_config = _FROZEN
    # Loopback by default (probes from this host); "" turns the listener off. Any other TCP address
    # requires health.tls (server TLS only: probes present no client certificate).
    listen: str = "127.0.0.1:50052"
    # Open Health/Watch streams on one listener, in total and from one peer address (ports ignored; every
    # unix-socket client is one peer). Over a cap: RESOURCE_EXHAUSTED at once.
    max_watch_streams: int = Field(default=64, ge=1, le=4096)
    max_watch_per_peer: int = Field(default=8, ge=1, le=4096)
    # A Watch ends with status OK after this many seconds; the client opens a new one.
    watch_lifetime_s: float = Field(default=300.0, ge=0.1, le=86400.0)
    # Server certificate and key (rotated like server.tls); client_ca_file is refused.
    tls: TlsSettings = TlsSettings()
    # Plaintext on a non-loopback address, for probes that speak no TLS (the kubelet's gRPC probe): an
    # explicit choice, logged at start. The listener answers only the four health statuses, never a credential
    # or a prompt, so what a network observer learns is whether the server is up and ready.
    plaintext_off_loopback: bool = False

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v:
            parse_listen(v)
        return v

    @model_validator(mode="after")
    def _tls(self) -> HealthSettings:
        if self.tls.client_ca_file is not None:
            raise ValueError("health.tls.client_ca_file: the health listener asks no client certificate")
        require_tls_off_loopback(
            self.listen,
            self.tls.enabled or self.plaintext_off_loopback,
            "health.listen",
            "health.tls",
            ", or health.plaintext_off_loopback = true for probes that speak no TLS (the kubelet's gRPC probe)",
        )
        return self


class HttpSettings(BaseModel):
    """``[http]``: the OpenAI-compatible HTTP API (``bastion.server.http``), beside the gRPC listener and under
    the same controls. Off by default. Every limit is explicit: headers, body, time to send them, idle
    keep-alive, connections in total and per peer address."""

    model_config = _FROZEN
    # "" (default): off. HOST:PORT; any address other than loopback requires http.tls.
    listen: str = ""
    # Server certificate and key (TLS 1.2+, HTTP/1.1); client_ca_file: clients must present a certificate that
    # CA signed (mutual TLS), the same file as server.tls.client_ca_file where both are set (one client CA, one
    # CRL, one principal mapping: auth.mtls).
    tls: TlsSettings = TlsSettings()
    # Request body (JSON), and the request head (path and all headers), in bytes. Over: 413 / 431 (closed).
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=16 << 20)
    max_header_bytes: int = Field(default=16 << 10, ge=1024, le=256 << 10)
    # Seconds a connection may take to send a request's headers (from connect, or from the previous response),
    # and then its body; past either the connection is closed (headers) or the call refused with 408 (body).
    header_timeout_s: float = Field(default=10.0, gt=0.0, le=300.0)
    body_timeout_s: float = Field(default=10.0, gt=0.0, le=300.0)
    # Seconds an idle keep-alive connection stays open.
    idle_timeout_s: int = Field(default=5, ge=1, le=300)
    # Open connections in total (over it: 503) and from one peer address (over it: closed at once).
    max_connections: int = Field(default=512, ge=1, le=65536)
    max_connections_per_peer: int = Field(default=64, ge=1, le=65536)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v and parse_listen(v)[0] != "tcp":
            raise ValueError("expected HOST:PORT (the HTTP API listens on TCP)")
        return v

    @model_validator(mode="after")
    def _tls(self) -> HttpSettings:
        require_tls_off_loopback(self.listen, self.tls.enabled, "http.listen", "http.tls")
        return self


class ModelSettings(BaseModel):
    model_config = _FROZEN
    # "default" (SmolLM2-135M-Instruct, fetched and converted on first use) or a local model directory.
    source: str = "default"
    # Name clients use; defaults to "smollm2-135m-instruct" for the default model, else the directory name.
    served_name: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # "auto": float32 on CPU (about 2x faster than bfloat16 on AVX2), the model's dtype on CUDA.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # Context length; None = the model's.
    max_model_len: int | None = Field(default=None, ge=16, le=1 << 20)
    max_num_seqs: int = Field(default=64, ge=1, le=4096)
    enable_prefix_caching: bool = True
    # CPU backend KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE).
    cpu_kv_cache_gib: float = Field(default=2.0, gt=0, le=1024)
    # Cap the KV cache at this many blocks (vLLM's num_gpu_blocks_override); default: what memory allows.
    num_kv_blocks: int | None = Field(default=None, ge=1, le=1 << 24)
    gpu_memory_utilization: float = Field(default=0.85, gt=0.05, le=0.98)
    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    seed: int = Field(default=0, ge=0)
    # LoRA adapters served with the model: name -> adapter directory (PEFT layout). Tenants name them in
    # GenerateRequest.adapter; their policy's `adapters` globs say which. Not sealed or signed yet: they
    # need weights.allow_unsealed (development) until that exists.
    adapters: dict[str, Path] = Field(default_factory=dict, max_length=64)
    max_lora_rank: int = Field(default=16, ge=1, le=512)
    # Start in seconds rather than minutes, for CI and development: no torch.compile (vLLM's enforce_eager)
    # and, on CPU, the model runs inside the EngineCore process (no separate worker process to spawn and
    # import torch into). Decoding is slower; the security controls are the same. Off by default.
    fast_start: bool = False
    # On CPU, the EngineCore is forked from a process that imported vLLM while the model was verified, with the
    # environment a spawned one would have (bastion.engine.vllm.forkserver): about 25 s off the start on 2
    # cores. Off: vLLM spawns it, importing vLLM once more.
    preload_engine_core: bool = True
    # Tokens per streamed message, at least (vLLM's stream_interval; 1 to 16, as a call may ask): a call's
    # sampling.stream_interval can only raise it. Fewer messages per token take less of the front end's CPU, which
    # on a small CPU host shares the cores with the engine; clients see the same text in fewer, larger messages.
    stream_interval: int = Field(default=1, ge=1, le=16)

    @field_validator("adapters")
    @classmethod
    def _adapter_names(cls, v: dict[str, Path]) -> dict[str, Path]:
        for name in v:
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
                raise ValueError("an adapter name must be 1-64 characters of [A-Za-z0-9._-]")
        return v


class OpenBaoSettings(BaseModel):
    """``weights.key_provider = "openbao"``: an OpenBao/Vault Transit key (token from a 0600 file or
    BAO_TOKEN / VAULT_TOKEN in the environment; never in this file)."""

    model_config = _FROZEN
    addr: str = Field(default="", max_length=512)
    key: str = Field(default="", max_length=128, pattern=r"^[A-Za-z0-9._-]*$")
    mount: str = Field(default="transit", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._/-]+$")
    token_file: Path | None = None
    ca_file: Path | None = None

    @field_validator("addr")
    @classmethod
    def _addr(cls, v: str) -> str:
        if v:
            check_service_url(v, "weights.openbao.addr")
        return v


class Pkcs11Settings(BaseModel):
    """``weights.key_provider = "pkcs11"``: an AES key in a PKCS#11 token (PIN from a 0600 file or
    BASTION_PKCS11_PIN in the environment; never in this file)."""

    model_config = _FROZEN
    module: Path | None = None
    token: str = Field(default="", max_length=32)
    key: str = Field(default="", max_length=128)
    pin_file: Path | None = None


class WeightsSettings(BaseModel):
    model_config = _FROZEN
    # Where the key-encryption key of a sealed model.source lives: "file" (kek_file), "openbao", "pkcs11".
    key_provider: Literal["file", "openbao", "pkcs11"] = "file"
    openbao: OpenBaoSettings = OpenBaoSettings()
    pkcs11: Pkcs11Settings = Pkcs11Settings()
    # KEK file (32 random bytes, mode 0600 or 0400; `bastion keys create`) that opens a sealed model
    # given as model.source. The default model is sealed under its own key, <cache_dir>/keys/default.kek.
    kek_file: Path | None = None
    # Trust policy (bastion.weights.policy): who may sign which models, from which origins. Required for a
    # sealed model.source; the default model uses the one created beside its local key.
    trust_policy: Path | None = None
    # Development only: serve a plain (unsealed) safetensors directory as model.source. Off by default;
    # when used, start-up logs a WARNING (no encryption at rest, no integrity check on load).
    allow_unsealed: bool = False

    @model_validator(mode="after")
    def _provider_complete(self) -> WeightsSettings:
        if self.key_provider == "openbao" and not (self.openbao.addr and self.openbao.key):
            raise ValueError("weights.key_provider = openbao needs weights.openbao.addr and weights.openbao.key")
        if self.key_provider == "pkcs11" and not (self.pkcs11.module and self.pkcs11.token and self.pkcs11.key):
            raise ValueError("weights.key_provider = pkcs11 needs weights.pkcs11.module, token and key")
        return self


class LimitSettings(BaseModel):
    """Request limits; each is documented in proto/bastion/v1/inference.proto."""

    model_config = _FROZEN
    max_input_bytes: int = Field(default=131072, ge=1, le=16 << 20)
    max_message_bytes: int = Field(default=32768, ge=1, le=16 << 20)
    max_messages: int = Field(default=64, ge=1, le=4096)
    max_tokens: int = Field(default=4096, ge=1, le=1 << 20)
    default_max_tokens: int = Field(default=256, ge=1, le=1 << 20)
    max_stop_strings: int = Field(default=8, ge=0, le=64)
    max_stop_bytes: int = Field(default=128, ge=1, le=4096)
    max_logprobs: int = Field(default=20, ge=0, le=20)
    # The longest prompt (tokens) whose own log-probabilities may be asked (SamplingParams.prompt_logprobs): the
    # engine computes a full-vocabulary distribution at every prompt position for them.
    max_prompt_logprobs_tokens: int = Field(default=2048, ge=1, le=1 << 20)
    max_model_name_bytes: int = Field(default=128, ge=1, le=1024)
    max_client_request_id_bytes: int = Field(default=128, ge=1, le=1024)


class ObservabilitySettings(BaseModel):
    model_config = _FROZEN
    # Prometheus scrape endpoint, separate from the gRPC port. "" disables it. Loopback, or any address with
    # metrics_tls (a scraper on another host).
    metrics_listen: str = "127.0.0.1:9464"
    # Its server certificate and key (TLS 1.2+); client_ca_file: scrapers must present a certificate that CA
    # signed (mutual TLS; optional).
    metrics_tls: TlsSettings = TlsSettings()
    # Where spans go: "none" (kept in process, for tests), "console" (stderr), "otlp" (OTEL_EXPORTER_OTLP_*
    # variables: bastion.observability.otlp; plaintext only to a loopback endpoint).
    traces_exporter: Literal["none", "console", "otlp"] = "none"
    # Audit records also exported as OpenTelemetry log records: "none", "console" (stderr) or "otlp". The
    # on-disk audit log stays the authority.
    audit_logs_exporter: Literal["none", "console", "otlp"] = "none"
    # Metrics pushed over OTLP too ("otlp"; every OTEL_METRIC_EXPORT_INTERVAL ms), beside the scrape endpoint.
    metrics_exporter: Literal["none", "otlp"] = "none"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # "text" (one line per record) or "json" (one object per line with request_id and tenant; vLLM's engine
    # processes too): bastion.observability.logs.
    log_format: Literal["text", "json"] = "text"

    @field_validator("metrics_listen")
    @classmethod
    def _metrics(cls, v: str) -> str:
        if v == "":
            return v
        if parse_listen(v)[0] != "tcp":
            raise ValueError("observability.metrics_listen must be HOST:PORT (or empty to disable)")
        return v

    @model_validator(mode="after")
    def _metrics_tls(self) -> ObservabilitySettings:
        listen, tls = self.metrics_listen, self.metrics_tls
        require_tls_off_loopback(listen, tls.enabled, "observability.metrics_listen", "observability.metrics_tls")
        return self


class TenancySettings(BaseModel):
    model_config = _FROZEN
    # The tenancy policy (bastion.tenancy.policy): principals → tenants and roles, per-tenant limits.
    # Required to serve: a principal that is not in it is refused.
    policy_file: Path | None = None


class IsolationSettings(BaseModel):
    model_config = _FROZEN
    # 32-byte secret (0600) from which each tenant's prefix-cache partition key is derived (HKDF).
    # None: <cache_dir>/keys/partition.key, created on first start.
    partition_key_file: Path | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix="BASTION_",
        env_nested_delimiter="__",
        case_sensitive=False,
    )

    server: ServerSettings = ServerSettings()
    health: HealthSettings = HealthSettings()
    http: HttpSettings = HttpSettings()
    model: ModelSettings = ModelSettings()
    weights: WeightsSettings = WeightsSettings()
    limits: LimitSettings = LimitSettings()
    observability: ObservabilitySettings = ObservabilitySettings()
    auth: AuthSettings = AuthSettings()
    tenancy: TenancySettings = TenancySettings()
    audit: AuditSettings = AuditSettings()
    isolation: IsolationSettings = IsolationSettings()
    assurance: AssuranceSettings = AssuranceSettings()
    cluster: ClusterSettings = ClusterSettings()
    cache_dir: Path = Field(default_factory=default_cache_dir)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = os.environ.get("_BASTION_CONFIG_FILE")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @model_validator(mode="after")
    def _health_apart(self) -> Settings:
        if self.health.listen:
            health, main = parse_listen(self.health.listen), parse_listen(self.server.listen)
            if health == main and health[2] != 0:
                raise ValueError("health.listen must differ from server.listen")
        if self.http.listen:
            http = parse_listen(self.http.listen)
            taken = [parse_listen(a) for a in (self.server.listen, self.health.listen) if a]
            if http[2] != 0 and http in taken:
                raise ValueError("http.listen must differ from server.listen and health.listen")
        return self

    @model_validator(mode="after")
    def _one_client_ca(self) -> Settings:
        grpc_ca, http_ca = self.server.tls.client_ca_file, self.http.tls.client_ca_file
        if grpc_ca is not None and http_ca is not None and grpc_ca.resolve() != http_ca.resolve():
            raise ValueError(
                "http.tls.client_ca_file must be the same file as server.tls.client_ca_file "
                "(one client CA: auth.mtls maps its certificates and auth.mtls.crl_file revokes them)"
            )
        return self

    @property
    def client_ca_file(self) -> Path | None:
        """The client CA of the listeners that ask client certificates (gRPC's and the HTTP API's: the same)."""
        return self.server.tls.client_ca_file or self.http.tls.client_ca_file

    @model_validator(mode="after")
    def _adapters_need_unsealed(self) -> Settings:
        if self.model.adapters and not self.weights.allow_unsealed:
            raise ValueError(
                "model.adapters: adapters are not sealed or signed yet; serving them needs "
                "weights.allow_unsealed = true (development only)"
            )
        return self

    def redacted(self) -> dict[str, Any]:
        """A loggable, printable view (``bastion config print``, the server's debug log). Secrets live in files
        (paths here), never in Settings; as defence in depth every string value under a name that says
        secret (``token``, ``pin``, ``password``, ``secret``, ``headers``, ``*_token``, …) is replaced, and every
        URL loses its user information, query and fragment (a signed URL carries its credential there)."""
        view: dict[str, Any] = _redact(self.model_dump(mode="json"), "")
        return view


# Leaf names whose string values are never shown (names ending in _file/_dir hold paths, which are shown).
_SECRET_NAME = re.compile(r"(?:^|_)(?:token|pin|password|passphrase|secret|headers|credentials?|api_key)$")
_NOT_SECRET = frozenset({"weights.pkcs11.token"})  # a PKCS#11 token's label (its PIN is pin_file)
REDACTED = "<redacted>"


def _redact_url(value: str) -> str:
    parts = urlsplit(value)
    if not parts.scheme or not parts.netloc:
        return value
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    tail = ("?" + REDACTED if parts.query else "") + ("#" + REDACTED if parts.fragment else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")) + tail


def _redact(value: Any, path: str) -> Any:
    if isinstance(value, dict):
        return {k: _redact(v, f"{path}.{k}" if path else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, path) for v in value]
    if not isinstance(value, str) or not value:
        return value
    name = path.rsplit(".", 1)[-1]
    if _SECRET_NAME.search(name) and path not in _NOT_SECRET:
        return REDACTED
    try:
        return _redact_url(value) if "://" in value else value
    except ValueError:  # not a URL after all (a bad port): shown only as redacted
        return REDACTED


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_settings(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Parses and validates settings once. Raises ConfigError naming the field; never echoes values."""
    path = config_file or os.environ.get("BASTION_CONFIG")
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"config file not found: {path}")
    previous = os.environ.get("_BASTION_CONFIG_FILE")
    try:
        if path is not None:
            os.environ["_BASTION_CONFIG_FILE"] = str(path)
        else:
            os.environ.pop("_BASTION_CONFIG_FILE", None)
        # Nested CLI overrides must merge with env/TOML values of the same section, so read those first.
        base = Settings()
        if not overrides:
            return base
        merged = deep_merge(base.model_dump(), overrides)
        return Settings.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"invalid configuration: {type(exc).__name__}") from None
    finally:
        if previous is None:
            os.environ.pop("_BASTION_CONFIG_FILE", None)
        else:
            os.environ["_BASTION_CONFIG_FILE"] = previous
