"""The command line's one error table: exception class -> exit code, and the one line the operator sees.

Exit codes, for every ``bastion`` command:

=====  ==================================================================================================
0      success
1      a check failed or the command could not complete: an integrity or format error (tampered,
       truncated, unsigned, wrong key), a failed or refused server call, any other bastion error.
       Commands that report a verdict (``health``, ``audit verify``, ``eval``, ``audit-isolation``)
       also return 1 for a negative one.
2      bad usage or configuration: an invalid option or argument, a missing, unreadable, insecure or
       already existing file or key, an I/O error on a file the operator named (argparse's own usage
       errors are 2 as well)
130    interrupted (Ctrl-C)
=====  ==================================================================================================

The message is one line on stderr, ``error: <text>``: a bastion error's ``detail`` (it names the
operator's own files and segments, never key material) or, without one, its public text; a failed server
call's status and message; an OS error's reason and file. Never a traceback. An exception outside the
table is a bug and propagates with its traceback.
"""

from __future__ import annotations

import sys

import grpc

from bastion.errors import BastionError, ConfigError, IntegrityError, InvalidArgument, NativeIOError

OK, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130

# Most specific class first: the first row the exception is an instance of decides.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (IntegrityError, FAILED),  # FormatError included: the artifact is bad
    (ConfigError, USAGE),
    (NativeIOError, USAGE),
    (InvalidArgument, USAGE),
    (BastionError, FAILED),
    (grpc.aio.AioRpcError, FAILED),
    (OSError, USAGE),
    (KeyboardInterrupt, INTERRUPTED),
)

HANDLED: tuple[type[BaseException], ...] = tuple(cls for cls, _ in EXIT_CODES)
"""What a command's caller catches and passes to :func:`report`."""


def exit_code(exc: BaseException) -> int:
    """The exit code for ``exc``; an exception outside the table is FAILED."""
    return next((code for cls, code in EXIT_CODES if isinstance(exc, cls)), FAILED)


def message(exc: BaseException) -> str:
    """The operator's text for ``exc``, on one line (no traceback; control characters become spaces)."""
    if isinstance(exc, BastionError):
        text = exc.detail or exc.public_message
    elif isinstance(exc, grpc.aio.AioRpcError):
        text = f"{exc.code().name}: {exc.details()}"
    elif isinstance(exc, OSError):
        text = f"{exc.strerror or type(exc).__name__}: {exc.filename or ''}".rstrip(": ")
    else:
        text = type(exc).__name__
    return "".join(c if c.isprintable() else " " for c in text)


def report(exc: BaseException) -> int:
    """Prints ``error: <text>`` for ``exc`` to stderr (nothing for Ctrl-C) and returns its exit code."""
    code = exit_code(exc)
    if code != INTERRUPTED:
        print(f"error: {message(exc)}", file=sys.stderr)
    return code
