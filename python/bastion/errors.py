"""One exception hierarchy for bastion. It imports no transport: the gRPC status table is
:mod:`bastion.server.status`, the command line's exit-code table :mod:`bastion.cli.errors`.

Every exception carries two texts:

* ``detail``, the positional argument, for server logs and the operator's command line. It may name
  paths, segments and internals, never secrets.
* ``public_message``, the only text a client ever sees: the class's fixed ``public_default``, unless a
  call site deliberately sets another with the ``public=`` keyword (a text with no path, no value a
  client sent and no internals). :class:`InvalidArgument` builds its own from the field and the limit,
  never the offending value.

The Rust extension raises these same classes (imported by the bindings), passing the detail positionally.
"""

from __future__ import annotations


class BastionError(Exception):
    """Base class. ``public_message`` is safe to send to a client; ``detail`` is not."""

    public_default = "internal error"

    def __init__(self, detail: str | None = None, *, public: str | None = None) -> None:
        self.public_message = public or self.public_default
        # detail is for logs and the operator's CLI only; it may name paths or internals but never secrets.
        self.detail = detail
        super().__init__(detail or self.public_message)


class InvalidArgument(BastionError):
    """A request field is missing, malformed or over its limit."""

    public_default = "invalid argument"

    def __init__(self, field: str, problem: str) -> None:
        # Client-safe by construction: callers pass the field's name and its limit, never the value.
        self.field = field
        super().__init__(public=f"{field}: {problem}")


class NotFound(BastionError):
    public_default = "not found"


class Overloaded(BastionError):
    """The server's bounded queue is full."""

    public_default = "server overloaded; retry later"


class Unavailable(BastionError):
    """The engine is not ready, draining, or dead. ``retry_after_s``, when set, says when a retry may succeed
    (a Serve replica died under the call: another one takes the retry)."""

    public_default = "service unavailable"

    def __init__(self, detail: str | None = None, *, public: str | None = None, retry_after_s: float | None = None):
        self.retry_after_s = None if retry_after_s is None else max(0.0, retry_after_s)
        super().__init__(detail, public=public)


class Unauthenticated(BastionError):
    public_default = "authentication required"


class PermissionDenied(BastionError):
    public_default = "permission denied"


class RateLimited(BastionError):
    """A tenant's request, token or stream limit is reached; ``retry_after_s`` says when to try again."""

    public_default = "rate limit exceeded; retry later"

    def __init__(self, retry_after_s: float, *, detail: str | None = None) -> None:
        self.retry_after_s = max(0.0, retry_after_s)
        super().__init__(detail)


class FailedPrecondition(BastionError):
    """The system is not in a state that allows the call (an unconfigured feature, an unreleased model)."""

    public_default = "failed precondition"


class ConfigError(BastionError):
    """The configuration is invalid; raised at start, never at request time."""

    public_default = "invalid configuration"


class EngineError(BastionError):
    """The engine failed a request or died."""

    public_default = "internal error"


class IntegrityError(BastionError):
    """A digest, signature, tag or format check failed (raised by the Rust core too)."""

    public_default = "integrity check failed"


class FormatError(IntegrityError):
    """A file is malformed (header, index, size)."""

    public_default = "malformed input"


class NativeIOError(BastionError):
    """An I/O error inside the Rust core (path and OS error in the detail)."""

    public_default = "I/O error"


class AlreadyFinalized(BastionError):
    """A native streaming object was used after finalize() or after a failed update."""

    public_default = "object already finalized"
