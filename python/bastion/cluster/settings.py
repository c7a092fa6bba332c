"""``[cluster]`` settings: one Ray node of bastion's locked-down cluster (``bastion cluster start-head`` /
``start-worker``) and the address a front door joins.

Nothing here is a secret: the token, the TLS key and the cluster CA are *file paths*, read by Ray on each
node (``RAY_AUTH_TOKEN_PATH``, ``RAY_TLS_SERVER_KEY``). ``replica_env`` is what Ray will ship to replicas
through ``runtime_env`` (visible to every token holder through Ray's state API, and copied by vLLM's Ray
executor to remote ranks), so it may hold file paths and plain options only: a name that says secret
(``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``, ``*PIN*``, ``*KEY*``, ``*CREDENTIAL*``) must end in ``_FILE``,
``_PATH`` or ``_DIR`` and hold an absolute path, and no value may look like key material (a PEM block, a
JWT, a bearer header, a long hex or base64 run). The checks that need the file system (modes, owners,
certificate SANs) run when a node starts (``bastion.cluster.preflight``), not here.

Ports: Ray binds every one of them on all interfaces whatever ``node_ip`` says; docs/cluster.md lists
which to open between the nodes and which to firewall. Defaults are a fixed block so the firewall rules
can be written once. Ray's client server (``ray://``, port 10001 by default) is not started at all.
"""

from __future__ import annotations

import collections
import ipaddress
import math
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

# Environment names Ray or bastion would read a secret from; never accepted in replica_env at all.
FORBIDDEN_ENV_NAMES = frozenset(
    {"RAY_AUTH_TOKEN", "BASTION_API_KEY", "BASTION_PKCS11_PIN", "BAO_TOKEN", "VAULT_TOKEN", "HF_TOKEN"}
)
# Parts of a variable name (split at "_") that say it holds a secret.
_SECRET_WORDS = frozenset(
    ["TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASS", "PASSPHRASE", "PIN", "KEY", "APIKEY", "KEK", "DEK"]
    + ["CREDENTIAL", "CREDENTIALS", "AUTH", "COOKIE"]
)
_PATH_SUFFIXES = ("_FILE", "_PATH", "_DIR")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_KEY_MATERIAL = (
    re.compile(r"-----BEGIN "),  # PEM: a private key, a certificate bundle pasted inline
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),  # a JWT
    re.compile(r"\b(bearer|basic)\s+\S", re.IGNORECASE),  # an Authorization header value
    re.compile(r"\b(hvs|hvb|sk|ghp|gho|github_pat|xox[abp])[._-][A-Za-z0-9_-]{16,}"),  # vault and API tokens
)
_HEX = re.compile(r"[0-9a-fA-F]{32,}")  # 128+ bits of hex: a key or a token (Ray's is 64 hex digits), or a digest
_RUN = re.compile(r"[A-Za-z0-9+/_=-]{40,}")
# Bits per character: random base64 of 32 bytes is above it all but about 2 times in 10,000, and long
# model-like names ("SmolLM2-135M-Instruct-converted-float32-v2": 4.32) are below.
_MIN_ENTROPY = 4.35


def _entropy(text: str) -> float:
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in collections.Counter(text).values())


def looks_like_secret(value: str) -> bool:
    """True when ``value`` holds something shaped like key material: a PEM block, a JWT, an Authorization
    header, a known token prefix, and (unless it is an absolute path, whose directories may well be named
    by digests or store hashes) 32+ hex digits or a 40+ character run of base64 whose entropy is that of
    random bytes. A heuristic backstop: the rule is that secrets travel as file paths."""
    if any(p.search(value) for p in _KEY_MATERIAL):
        return True
    if value.startswith("/"):
        return False
    return bool(_HEX.search(value)) or any(_entropy(r) >= _MIN_ENTROPY for r in _RUN.findall(value))


def secret_name(name: str) -> bool:
    """Whether an environment variable's name says it holds a secret (``*_TOKEN``, ``API_KEY``, ...)."""
    return any(part in _SECRET_WORDS for part in name.upper().split("_"))


def check_shipped_env(env: dict[str, str], field: str) -> None:
    """``ValueError`` (naming ``field`` and the variable, never the value) unless every variable of ``env``
    is safe to hand to Ray (see the module)."""
    for name, value in env.items():
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"{field}: {name!r} is not an environment variable name")
        if name.upper() in FORBIDDEN_ENV_NAMES or name.upper().startswith("RAY_AUTH"):
            raise ValueError(f"{field}.{name}: a credential variable; Ray must never carry it")
        if looks_like_secret(value):
            raise ValueError(f"{field}.{name}: the value looks like key material; give a file path instead")
        if len(value) > 4096 or not value.isprintable():
            raise ValueError(f"{field}.{name}: at most 4096 printable characters")
        if secret_name(name) and not (name.upper().endswith(_PATH_SUFFIXES) and value.startswith("/")):
            raise ValueError(
                f"{field}.{name}: the name says secret; only a file path may go to Ray "
                "(name it *_FILE, *_PATH or *_DIR and give an absolute path)"
            )


def check_node_ip(value: str, field: str) -> str:
    """An IP literal this node is reached at (``ValueError`` otherwise; names are not resolved)."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{field}: an IPv4 or IPv6 address (no host names: TLS checks the address)") from None
    if ip.is_unspecified or ip.is_multicast:
        raise ValueError(f"{field}: the address other nodes reach this node at, not a wildcard or multicast")
    if str(ip) == "127.0.0.1":
        # Ray replaces 127.0.0.1 by the host's address, which the node certificate does not name.
        raise ValueError(f"{field}: not 127.0.0.1 (Ray rewrites it to the host address); use e.g. 127.0.0.2")
    return str(ip)


def split_address(value: str, field: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 in brackets) of a head node's GCS."""
    host, sep, port_text = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{field}: HOST:PORT of the head node (its cluster.node_ip and cluster.gcs_port)")
    return check_node_ip(host, field), int(port_text)


class ClusterSettings(BaseModel):
    """``[cluster]``: this node of the Ray cluster, and the head a front door joins."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    node_ip: str = Field(default="", description="this node's IP address (Ray's --node-ip-address); required")
    head_address: str = Field(
        default="", description="HOST:PORT of the head node's GCS: what workers and the front door join"
    )
    token_file: Path | None = Field(
        default=None, description="the cluster token (0600, `bastion cluster token`), the same file on every node"
    )
    tls_cert_file: Path | None = Field(
        default=None, description="this node's certificate, signed by the cluster CA, naming node_ip"
    )
    tls_key_file: Path | None = Field(default=None, description="its private key (0600 or 0400)")
    tls_ca_file: Path | None = Field(
        default=None, description="the dedicated cluster CA (`bastion cluster ca`); no other CA"
    )
    temp_dir: Path | None = Field(
        default=None,
        description="private directory (0700) for Ray's session files, logs and sockets (Ray's --temp-dir is "
        "<temp_dir>/ray); keep the path short: Unix socket paths inside must fit 107 bytes",
    )
    spill_dir: Path | None = Field(
        default=None,
        description="private directory (0700) where Ray spills objects (token ids) to disk (<spill_dir>/ray)",
    )
    gcs_port: int = Field(default=6379, ge=1024, le=65535, description="head only: the GCS (cluster entry point)")
    node_manager_port: int = Field(default=6380, ge=1024, le=65535, description="the raylet")
    object_manager_port: int = Field(default=6381, ge=1024, le=65535, description="object transfer between nodes")
    agent_http_port: int = Field(default=6382, ge=1024, le=65535, description="the dashboard agent's HTTP server")
    agent_grpc_port: int = Field(default=6383, ge=1024, le=65535, description="the dashboard agent's gRPC server")
    runtime_env_agent_port: int = Field(default=6384, ge=1024, le=65535, description="the runtime-env agent")
    metrics_export_port: int = Field(default=6385, ge=1024, le=65535, description="Prometheus metrics (no auth)")
    dashboard_metrics_port: int = Field(
        default=6386, ge=1024, le=65535, description="head only: the dashboard process's metrics (no auth)"
    )
    autoscaler_metrics_port: int = Field(
        default=6387, ge=1024, le=65535, description="head only: the autoscaler monitor's metrics (no auth)"
    )
    min_worker_port: int = Field(default=10002, ge=1024, le=65535, description="first port of Ray's worker processes")
    max_worker_port: int = Field(default=10999, ge=1024, le=65535, description="last port of Ray's worker processes")
    num_cpus: int | None = Field(default=None, ge=0, le=4096, description="CPUs this node offers; None: all")
    num_gpus: int | None = Field(default=None, ge=0, le=64, description="GPUs this node offers; None: all")
    object_store_bytes: int | None = Field(
        default=None, ge=80 * 1024 * 1024, description="Ray's shared-memory object store; None: Ray's default (30%)"
    )
    # Raised above Ray's defaults (5 failures, 10 s timeout, 3 s period): under load a live node missing a
    # few heartbeats must not be declared dead (its replicas would be torn down and restarted elsewhere).
    health_check_failure_threshold: int = Field(default=10, ge=1, le=1000)
    health_check_timeout_ms: int = Field(default=20000, ge=1000, le=600_000)
    health_check_period_ms: int = Field(default=3000, ge=500, le=600_000)
    # Serve replicas of the engine (bastion.cluster.pool): 0 runs the engine inside `bastion serve`.
    replicas: int = Field(default=0, ge=0, le=1024, description="Serve replicas of the served model; 0: none")
    replica_max_ongoing_requests: int | None = Field(
        default=None, ge=1, le=4096, description="requests one replica runs at once; None: model.max_num_seqs"
    )
    replica_max_queued_requests: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="requests the front door holds for busy replicas; past it a call ends RESOURCE_EXHAUSTED",
    )
    replica_num_cpus: float = Field(default=1.0, ge=0, le=4096, description="CPUs Ray reserves per replica")
    replica_num_gpus: float = Field(default=0.0, ge=0, le=64, description="GPUs Ray reserves per replica")
    replica_health_check_period_s: float = Field(default=10.0, gt=0, le=600)
    replica_health_check_timeout_s: float = Field(default=30.0, gt=0, le=600)
    # The vLLM replica: every replica node's own bastion configuration file, at this absolute path on each
    # node ([model], its key provider, its partition key file). Only the path travels through Ray.
    replica_config_file: Path | None = Field(default=None, description="absolute path of each node's config")
    # Tenant-aware routing (bastion.cluster.routing): the key covers the first routing_blocks full blocks of
    # routing_block_tokens tokens; set the engine's KV block size (vLLM: 16 on GPU, 128 on CPU).
    routing_block_tokens: int = Field(default=128, ge=1, le=4096, description="tokens per routed prompt block")
    routing_blocks: int = Field(default=2, ge=1, le=64, description="leading full blocks the routing key covers")
    replica_env: dict[str, str] = Field(
        default_factory=dict,
        max_length=64,
        description="environment variables Ray gives replicas (runtime_env): file paths and options only",
    )

    @field_validator("node_ip")
    @classmethod
    def _node_ip(cls, v: str) -> str:
        return check_node_ip(v, "cluster.node_ip") if v else v

    @field_validator("head_address")
    @classmethod
    def _head(cls, v: str) -> str:
        if v:
            split_address(v, "cluster.head_address")
        return v

    @field_validator("token_file", "tls_cert_file", "tls_key_file", "tls_ca_file", "temp_dir", "spill_dir")
    @classmethod
    def _absolute(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        # Ray's processes run in other directories (a replica's working_dir): a relative path would name
        # another file there, and `bastion cluster stop` finds a node by its temp_dir.
        if v is not None and not v.is_absolute():
            raise ValueError(f"cluster.{info.field_name} must be an absolute path")
        return v

    @field_validator("replica_env")
    @classmethod
    def _replica_env(cls, v: dict[str, str]) -> dict[str, str]:
        check_shipped_env(v, "cluster.replica_env")
        return v

    @model_validator(mode="after")
    def _ports(self) -> ClusterSettings:
        if self.min_worker_port >= self.max_worker_port:
            raise ValueError("cluster.min_worker_port must be below cluster.max_worker_port")
        named = {name: getattr(self, name) for name in PORT_FIELDS}
        seen: dict[int, str] = {}
        for name, port in named.items():
            if port in seen:
                raise ValueError(f"cluster.{name} and cluster.{seen[port]} are the same port")
            seen[port] = name
            if self.min_worker_port <= port <= self.max_worker_port:
                raise ValueError(f"cluster.{name} lies inside cluster.min_worker_port..max_worker_port")
        return self

    @property
    def configured(self) -> bool:
        """Whether this configuration names a cluster at all (serve joins one only when it does)."""
        return bool(self.node_ip or self.head_address)


#: The single ports of a node (the worker range aside), in the order docs/cluster.md lists them.
PORT_FIELDS = (
    "gcs_port",
    "node_manager_port",
    "object_manager_port",
    "agent_http_port",
    "agent_grpc_port",
    "runtime_env_agent_port",
    "metrics_export_port",
    "dashboard_metrics_port",
    "autoscaler_metrics_port",
)
