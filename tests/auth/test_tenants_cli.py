"""`bastion tenants check / issue-key / revoke-key`: keys issued into a tenant's policy entry, atomically."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bastion.auth.api_keys import ApiKeyStore
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
