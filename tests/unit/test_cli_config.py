"""``bastion --version``, ``bastion config check FILE`` and ``bastion config print`` (issue 18, item 3): a
configuration checked as a start would check it, and the effective settings shown without a secret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bastion.cli.main import main
from bastion.config import REDACTED, Settings
from identity import make_identity


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's --version
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--version")
    assert code == 0 and out.startswith("bastion ") and out.strip() != "bastion"


def test_config_check_runs_the_start_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ident = make_identity(tmp_path / "id")
    good = tmp_path / "good.toml"
    good.write_text(ident.toml(tmp_path / "audit"))
    code, out, err = _run(capsys, "config", "check", str(good))
    assert (code, err) == (0, ""), err
    assert out.startswith(f"OK: {good}") and "tenancy.policy_file" in out and "auth.api_keys.file" in out

    # Each of these would stop a start: the check names the setting, exit 2, one line, no traceback.
    cases = {
        "limit": ("[limits]\nmax_tokens = 0\n", "limits.max_tokens"),
        "no auth": ('[tenancy]\npolicy_file = "/nonexistent"\n', "no authentication configured"),
        "policy": (ident.toml(tmp_path / "audit").replace(str(ident.policy_file), str(tmp_path / "none")), "policy"),
        "tls": (
            ident.toml(tmp_path / "audit")
            + f'[http]\nlisten = "127.0.0.1:0"\n[http.tls]\ncert_file = "{good}"\nkey_file = "{good}"\n',
            "http.tls.cert_file/key_file: cannot load them",
        ),
    }
    for name, (text, expected) in cases.items():
        bad = tmp_path / f"{name}.toml"
        bad.write_text(text)
        code, out, err = _run(capsys, "config", "check", str(bad))
        assert code == 2 and out == "" and expected in err and err.count("\n") == 1, (name, err)
        assert "Traceback" not in err


def test_config_print_shows_effective_settings_without_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "bastion.toml"
    cfg.write_text(
        '[auth.jwt]\nissuer = "https://idp.example"\naudiences = ["bastion"]\n'
        'jwks_url = "https://idp.example:8443/keys?X-Amz-Signature=s3cr3t"\n'
    )
    monkeypatch.setenv("BASTION_SERVER__MAX_CONCURRENT_STREAMS", "99")  # the environment is part of it
    code, out, _ = _run(capsys, "config", "print", "--config", str(cfg))
    assert code == 0
    shown = json.loads(out)
    assert shown["server"]["max_concurrent_streams"] == 99
    assert shown["auth"]["jwt"]["jwks_url"] == f"https://idp.example:8443/keys?{REDACTED}"
    assert "s3cr3t" not in out


def test_redacted_hides_secret_named_values() -> None:
    # No secret value lives in Settings today (secrets are files); a field named like one never shows.
    from bastion.config import _redact

    view = _redact({"otlp": {"headers": "api-key=abc", "token": "t", "ca_file": "/etc/ca.pem"}}, "")
    assert view == {"otlp": {"headers": REDACTED, "token": REDACTED, "ca_file": "/etc/ca.pem"}}
    assert Settings().redacted()["weights"]["pkcs11"]["token"] == ""  # a token label, not a secret
