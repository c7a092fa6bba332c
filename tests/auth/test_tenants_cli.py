"""`bastion tenants check / issue-key / revoke-key`: keys issued into a tenant's policy entry, atomically."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bastion.auth.api_keys import ApiKeyStore
from bastion.auth.principal import api_key_principal_id
from bastion.tenancy.policy import TenancyPolicy

POLICY = '[tenants.chat]\nmodels = ["*"]\n'


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bastion.cli.main", *args], capture_output=True, text=True, timeout=60)


def test_issue_key_adds_the_principal_and_revoke_works(tmp_path: Path) -> None:
    policy, store = tmp_path / "tenants.toml", tmp_path / "keys.json"
    policy.write_text(POLICY)
    out = cli(
        "tenants",
        "issue-key",
        "--policy",
        str(policy),
        "--store",
        str(store),
        "--tenant",
        "chat",
        "--role",
        "user",
        "--role",
        "admin",
    )
    assert out.returncode == 0, out.stderr
    fields = dict(line.split(": ", 1) for line in out.stdout.splitlines())
    p = TenancyPolicy.load(policy)
    a = p.assignment(fields["principal id"])
    assert a is not None and a.tenant == "chat" and a.roles == {"user", "admin"}
    assert ApiKeyStore(store).authenticate(fields["key"]).id == fields["principal id"]
    check = cli("tenants", "check", str(policy))
    assert check.returncode == 0 and json.loads(check.stdout)["principals"] == 1
    rev = cli("tenants", "revoke-key", "--store", str(store), fields["key id"])
    assert rev.returncode == 0, rev.stderr


def test_unknown_tenant_and_bad_policy_refused_without_leftovers(tmp_path: Path) -> None:
    policy, store = tmp_path / "tenants.toml", tmp_path / "keys.json"
    policy.write_text(POLICY)
    out = cli("tenants", "issue-key", "--policy", str(policy), "--store", str(store), "--tenant", "nope")
    assert out.returncode == 2 and "no [tenants.nope] section" in out.stderr and "Traceback" not in out.stderr
    assert not store.exists() and policy.read_text() == POLICY
    policy.write_text("[tenants.chat]\nbogus = 1\n")
    bad = cli("tenants", "check", str(policy))
    assert bad.returncode == 2 and "tenants.chat.bogus" in bad.stderr


def test_concurrent_issue_key_runs_lose_no_principal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Red-team finding: two issue-key runs at once each read the old policy and the later write dropped the
    other's principal (its key then worked nowhere). The policy's read-modify-write holds a lock."""
    from bastion.auth import api_keys
    from bastion.cli import tenants
    from bastion.cli.main import main

    policy, store = tmp_path / "tenants.toml", tmp_path / "keys.json"
    policy.write_text(POLICY)
    real_write = tenants.atomic_write

    def slow_write(*args: Any, **kwargs: Any) -> None:
        time.sleep(0.2)  # widens the window between reading the policy and writing it back
        real_write(*args, **kwargs)

    monkeypatch.setattr(tenants, "atomic_write", slow_write)
    argv = ["tenants", "issue-key", "--policy", str(policy), "--store", str(store), "--tenant", "chat"]
    codes: list[int] = []
    threads = [threading.Thread(target=lambda: codes.append(main(argv))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert codes == [0, 0, 0, 0]
    issued = {r.key_id for r in api_keys.list_keys(store)}
    p = TenancyPolicy.load(policy)
    assert len(issued) == 4 and p.principal_count == 4
    assert all(p.assignment(api_key_principal_id(k)) is not None for k in issued)
