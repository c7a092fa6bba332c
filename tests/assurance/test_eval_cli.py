"""`bastion eval` refuses bad usage before it runs a single probe (exit 2, a message naming the option)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.cli.main import main


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--attestations-dir", "ATTS"], "--attestations-dir needs --sign-key"),
        (["--sign-key", "MISSING"], "not a readable file"),
        (["--concurrency", "0"], "--concurrency must be 1..256"),
        (["--adapter", "support-v1"], "--adapter needs --parent"),
    ],
)
def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    extra = [str(tmp_path / a) if a in ("ATTS", "MISSING") else a for a in extra]
    code = main(["eval", "some-model", "--target", "unix:/nonexistent.sock", "--out", str(tmp_path / "out"), *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_bad_gate_policy_fails_before_any_probe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "gate.toml"
    policy.write_text("version = 1\n[families.harmful]\nmax_rate_upper = 2\n")
    code = main(
        [
            "eval",
            "m",
            "--target",
            "unix:/nonexistent.sock",
            "--out",
            str(tmp_path / "out"),
            "--gate-policy",
            str(policy),
        ]
    )
    assert code == 2  # a bad gate policy is bad configuration (bastion.cli.errors)
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "families.harmful.max_rate_upper" in err and "Traceback" not in err
