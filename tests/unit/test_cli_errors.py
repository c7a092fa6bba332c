"""The command line's one error table (bastion.cli.errors): exit codes and the one-line operator message."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import bastion.cli
from bastion import errors
from bastion.assurance.release import NotReleased
from bastion.assurance.runner import EvalError
from bastion.audit.errors import AuditUnavailable
from bastion.cli.errors import EXIT_CODES, HANDLED, exit_code, message, report
from bastion.cli.main import main

PATH = "/etc/bastion/kek.bin"


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.IntegrityError(f"{PATH}: segment 3: tag mismatch"), 1),
        (errors.FormatError(f"{PATH}: header too short"), 1),
        (errors.ConfigError(f"key file mode must be 0600 or 0400, not 0644: {PATH}"), 2),
        (errors.NativeIOError(f"{PATH}: permission denied"), 2),
        (errors.InvalidArgument("segment_size", "a power of two from 64 KiB to 64 MiB"), 2),
        (errors.NotFound("no key aaaaaaaaaaaa in keys.json"), 1),
        (errors.EngineError(), 1),
        (errors.Unavailable("audit log closed"), 1),
        (AuditUnavailable("audit log closed"), 1),
        (NotReleased("quarantined"), 1),
        (EvalError("probe p1: UNAVAILABLE: engine gone"), 1),
        (FileNotFoundError(2, "No such file or directory", PATH), 2),
        (PermissionError(13, "Permission denied", PATH), 2),
        (KeyboardInterrupt(), 130),
        (RuntimeError("a bug"), 1),  # outside the table: falls to FAILED
    ],
)
def test_exit_codes(exc: BaseException, code: int) -> None:
    assert exit_code(exc) == code


def test_table_is_most_specific_first_and_handled_matches_it() -> None:
    classes = [cls for cls, _ in EXIT_CODES]
    for i, earlier in enumerate(classes):
        for later in classes[i + 1 :]:
            assert not issubclass(later, earlier), f"{later.__name__} is shadowed by {earlier.__name__}"
    assert tuple(classes) == HANDLED


def test_message_is_the_detail_else_the_public_text_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert message(errors.ConfigError(f"cannot read {PATH}")) == f"cannot read {PATH}"
    assert message(errors.Unavailable()) == "service unavailable"
    assert message(errors.NotFound(public="model not found")) == "model not found"
    assert message(FileNotFoundError(2, "No such file or directory", PATH)) == f"No such file or directory: {PATH}"
    assert message(OSError("bare")) == "OSError"
    assert message(errors.IntegrityError("a\nb\x1b[31mc")) == "a b [31mc"  # no second line, no escape sequence
    assert report(errors.ConfigError(f"cannot read {PATH}")) == 2
    assert report(KeyboardInterrupt()) == 130
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: cannot read {PATH}\n"  # nothing for Ctrl-C, never a traceback


def test_main_applies_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: not a directory: {tmp_path / 'absent'}\n"


def test_no_cli_module_keeps_its_own_table() -> None:
    """Only bastion.cli.errors and main's single ``except`` decide exit codes for bastion errors."""
    for path in Path(bastion.cli.__file__).parent.glob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                names = {n.id for n in ast.walk(node.type) if isinstance(n, ast.Name)}
                names |= {n.attr for n in ast.walk(node.type) if isinstance(n, ast.Attribute)}
                assert not names & {"BastionError", "ConfigError", "IntegrityError"}, (path.name, node.lineno)
