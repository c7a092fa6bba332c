"""The exception hierarchy (detail positional, client text fixed) and its gRPC table (bastion.server.status)."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from bastion import errors
from bastion.assurance.release import NotReleased
from bastion.assurance.runner import EvalError
from bastion.audit.errors import AuditUnavailable
from bastion.server.status import STATUS_TABLE, grpc_status, status_code

PATH = "/srv/bastion/models/tenant-a/weights-00003.ctxd"


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.InvalidArgument("model", "is required"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound(), grpc.StatusCode.NOT_FOUND),
        (errors.Overloaded(), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Unavailable(), grpc.StatusCode.UNAVAILABLE),
        (errors.Unauthenticated(), grpc.StatusCode.UNAUTHENTICATED),
        (errors.PermissionDenied(), grpc.StatusCode.PERMISSION_DENIED),
        (errors.RateLimited(1.0), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.FailedPrecondition(), grpc.StatusCode.FAILED_PRECONDITION),
        (NotReleased(), grpc.StatusCode.FAILED_PRECONDITION),
        (AuditUnavailable(), grpc.StatusCode.UNAVAILABLE),
        (errors.ConfigError("server.tls.key_file: /etc/bastion/key.pem unreadable"), grpc.StatusCode.INTERNAL),
        (errors.FormatError("/models/x/weights.ctxh: bad header"), grpc.StatusCode.INTERNAL),
        (errors.NativeIOError("/models/x: EACCES"), grpc.StatusCode.INTERNAL),
        (errors.AlreadyFinalized(), grpc.StatusCode.INTERNAL),
        (EvalError("probe p1: UNAVAILABLE"), grpc.StatusCode.INTERNAL),
        (errors.EngineError("worker 3 segfaulted"), grpc.StatusCode.INTERNAL),
        (errors.IntegrityError("/models/x tag mismatch"), grpc.StatusCode.INTERNAL),
    ],
)
def test_table(exc: errors.BastionError, code: grpc.StatusCode) -> None:
    got_code, message = grpc_status(exc)
    assert got_code == code
    assert exc.detail is None or exc.detail not in message


def test_unknown_exceptions_fall_closed() -> None:
    assert grpc_status(ValueError("/etc/shadow")) == (grpc.StatusCode.INTERNAL, "internal error")
    assert grpc_status(KeyError("k")) == (grpc.StatusCode.INTERNAL, "internal error")
    assert status_code(RuntimeError(PATH)) == grpc.StatusCode.INTERNAL


def test_invalid_argument_message_shape() -> None:
    exc = errors.InvalidArgument("sampling.top_k", "must be between 0 and 1000")
    assert grpc_status(exc) == (grpc.StatusCode.INVALID_ARGUMENT, "sampling.top_k: must be between 0 and 1000")


def _every_class() -> list[type[errors.BastionError]]:
    defined = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.BastionError)]
    return [*defined, NotReleased, EvalError, AuditUnavailable]


def _with_detail(cls: type[errors.BastionError], detail: str) -> errors.BastionError:
    if cls is errors.RateLimited:
        return errors.RateLimited(2.0, detail=detail)
    return cls(detail)


@pytest.mark.parametrize("cls", [c for c in _every_class() if c is not errors.InvalidArgument])
def test_a_detail_with_a_path_never_reaches_the_client(cls: type[errors.BastionError]) -> None:
    detail = f"segment 3 of {PATH}: tag mismatch"
    exc = _with_detail(cls, detail)
    assert exc.detail == detail and str(exc) == detail  # for logs and the operator's CLI
    assert exc.public_message == cls.public_default
    code, message = grpc_status(exc)
    assert code == status_code(exc) and message == cls.public_default
    for text in (exc.public_message, message):
        assert PATH not in text and "/srv" not in text and "segment 3" not in text


def test_positional_argument_is_the_detail_and_public_is_keyword_only() -> None:
    exc = errors.NotFound(PATH)
    assert (exc.detail, exc.public_message) == (PATH, "not found")
    exc = errors.NotFound(PATH, public="model not found")
    assert (exc.detail, exc.public_message, str(exc)) == (PATH, "model not found", PATH)
    assert grpc_status(exc) == (grpc.StatusCode.NOT_FOUND, "model not found")
    bare = errors.Unavailable()
    assert (bare.detail, bare.public_message, str(bare)) == (None, "service unavailable", "service unavailable")
    with pytest.raises(TypeError):
        errors.NotFound(PATH, "model not found")  # type: ignore[misc]  # the client text is keyword-only
    limited = errors.RateLimited(-1.0, detail=PATH)
    assert (limited.retry_after_s, limited.detail) == (0.0, PATH)
    assert limited.public_message == "rate limit exceeded; retry later"


def test_invalid_argument_names_the_field_and_the_limit() -> None:
    exc = errors.InvalidArgument("sampling.max_tokens", "must be between 1 and 4096")
    assert exc.field == "sampling.max_tokens" and exc.detail is None
    assert exc.public_message == str(exc) == "sampling.max_tokens: must be between 1 and 4096"


def test_errors_import_no_transport() -> None:
    loaded = "sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'google'))"
    code = f"import sys, bastion.errors; sys.exit(', '.join({loaded}) or None)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def test_status_table_is_most_specific_first() -> None:
    classes = [cls for cls, _ in STATUS_TABLE]
    for i, earlier in enumerate(classes):
        for later in classes[i + 1 :]:
            assert not issubclass(later, earlier), f"{later.__name__} is shadowed by {earlier.__name__}"
    assert classes[-1] is errors.BastionError and STATUS_TABLE[-1][1] == grpc.StatusCode.INTERNAL
