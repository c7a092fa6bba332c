"""`bastion api-keys issue/revoke/list` as a user runs them: the key printed once, exit codes, one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bastion.auth.api_keys import ApiKeyStore
from bastion.cli import apikeys
from bastion.cli.main import main
from bastion.errors import Unauthenticated


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))  # errors go through the one CLI table (bastion.cli.errors)
    out, err = capsys.readouterr()
    return code, out, err


def test_issue_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "keys.json"
    code, out, err = run(
        capsys,
        "api-keys",
        "issue",
        "--store",
        str(store),
        "--principal",
        "ci bot",
        "--expires-in",
        "30d",
        "--description",
        "nightly",
    )
    assert code == 0, err
    key = re.search(r"^key: (bst_\S+)$", out, re.M)
    key_id = re.search(r"^key id: ([a-z2-7]{12})$", out, re.M)
    assert key and key_id and f"principal id: apikey:{key_id[1]}" in out
    assert "shown only this once" in err
    assert key[1] not in store.read_text()
    assert ApiKeyStore(store).authenticate(key[1]).id == f"apikey:{key_id[1]}"

    code, out, _ = run(capsys, "api-keys", "list", "--store", str(store))
    assert code == 0 and key_id[1] in out and "'ci bot'" in out and "expires 20" in out and "'nightly'" in out
    assert key[1] not in out and "sha256" not in out
    code, out, _ = run(capsys, "api-keys", "list", "--store", str(store), "--json")
    (row,) = json.loads(out)
    assert row["key_id"] == key_id[1] and row["revoked_at"] is None and "sha256" not in row

    code, out, _ = run(capsys, "api-keys", "revoke", "--store", str(store), key_id[1])
    assert code == 0 and out.strip() == f"revoked {key_id[1]}"
    with pytest.raises(Unauthenticated, match="revoked api key"):
        ApiKeyStore(store).authenticate(key[1])
    code, out, _ = run(capsys, "api-keys", "list", "--store", str(store))
    assert "revoked 20" in out


def test_errors_are_one_line_with_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "keys.json"
    assert run(capsys, "api-keys", "issue", "--store", str(store), "--principal", "a")[0] == 0
    code, _, err = run(capsys, "api-keys", "revoke", "--store", str(store), "aaaaaaaaaaaa")
    assert code == 1 and err.strip() == f"error: no key aaaaaaaaaaaa in {store}"
    code, _, err = run(capsys, "api-keys", "revoke", "--store", str(store), "../../etc")
    assert code == 2 and err.count("\n") == 1 and "KEY_ID" in err
    code, _, err = run(capsys, "api-keys", "list", "--store", str(tmp_path / "absent.json"))
    assert code == 2 and "no API key store at" in err
    for bad in ("0d", "30", "d", "1y", "99999d", "-1h"):
        code, _, err = run(
            capsys, "api-keys", "issue", "--store", str(store), "--principal", "a", f"--expires-in={bad}"
        )
        assert code == 2 and err.startswith("error: --expires-in"), (bad, err)
    code, _, err = run(capsys, "api-keys", "issue", "--store", str(store), "--principal", "bad\x07name")
    assert code == 2 and "principal: printable" in err and "Traceback" not in err
    store.write_text("{broken")
    code, _, err = run(capsys, "api-keys", "list", "--store", str(store))
    assert code == 2 and "malformed API key store" in err and "{broken" not in err


def test_durations() -> None:
    assert apikeys.parse_duration("12h").total_seconds() == 43200
    assert apikeys.parse_duration("90m").total_seconds() == 5400
    assert apikeys.parse_duration("3600s").total_seconds() == 3600
    assert apikeys.parse_duration("3660d").days == 3660
