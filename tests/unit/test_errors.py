from __future__ import annotations

import pytest

import grpc
from bastion import errors
from bastion.errors import grpc_status


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.InvalidArgument("model", "is required"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound(), grpc.StatusCode.NOT_FOUND),
        (errors.Overloaded(), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Unavailable(), grpc.StatusCode.UNAVAILABLE),
        (errors.Unauthenticated(), grpc.StatusCode.UNAUTHENTICATED),
        (errors.PermissionDenied(), grpc.StatusCode.PERMISSION_DENIED),
        (errors.EngineError(detail="worker 3 segfaulted"), grpc.StatusCode.INTERNAL),
        (errors.IntegrityError(detail="/models/x tag mismatch"), grpc.StatusCode.INTERNAL),
    ],
)
def test_table(exc: errors.BastionError, code: grpc.StatusCode) -> None:
    got_code, message = grpc_status(exc)
    assert got_code == code
    assert exc.detail is None or exc.detail not in message


def test_unknown_exceptions_fall_closed() -> None:
    assert grpc_status(ValueError("/etc/shadow")) == (grpc.StatusCode.INTERNAL, "internal error")
    assert grpc_status(KeyError("k")) == (grpc.StatusCode.INTERNAL, "internal error")


def test_invalid_argument_message_shape() -> None:
    exc = errors.InvalidArgument("sampling.top_k", "must be between 0 and 1000")
    assert grpc_status(exc) == (grpc.StatusCode.INVALID_ARGUMENT, "sampling.top_k: must be between 0 and 1000")
