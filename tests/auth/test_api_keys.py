"""The API key store: issue, verify, revoke and expiry, reloads without restart, fails closed."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import stat
import threading
from pathlib import Path

import pytest

from bastion.auth import api_keys
from bastion.auth.api_keys import ApiKeyStore, issue, list_keys, revoke
from bastion.errors import ConfigError, Unauthenticated


def refused(store: ApiKeyStore, key: str) -> str:
    with pytest.raises(Unauthenticated) as ei:
        store.authenticate(key)
    exc = ei.value
    assert exc.public_message == "invalid credentials"
    secret = key[len("bst_aaaaaaaaaaaa_") :]
    for text in (str(exc), repr(exc), exc.detail or ""):
        assert not key or key not in text
        assert len(secret) < 8 or secret not in text
    assert exc.detail is not None
    return exc.detail


def test_issue_writes_only_a_hash_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key_id, key = issue(path, "ci bot", description="for CI")
    assert re.fullmatch(r"bst_[a-z2-7]{12}_[A-Za-z0-9_-]{43}", key)
    assert key.startswith(f"bst_{key_id}_")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert key not in text and key[len("bst_aaaaaaaaaaaa_") :] not in text
    doc = json.loads(text)
    (entry,) = doc["keys"]
    assert entry["key_id"] == key_id and entry["principal"] == "ci bot" and entry["description"] == "for CI"
    assert entry["sha256"] == api_keys.hash_key(key) and entry["revoked_at"] is None and entry["expires_at"] is None
    assert not list(tmp_path.glob(".keys.json.*.tmp"))  # the temporary file was renamed


def test_a_valid_key_maps_to_its_principal(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key_id, key = issue(path, "dev key (tenant dev)")
    p = ApiKeyStore(path).authenticate(key)
    assert (p.id, p.method, p.subject) == (f"apikey:{key_id}", "api_key", "dev key (tenant dev)")


def test_wrong_secret_for_a_known_key_id(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key_id, key = issue(path, "a")
    other_secret = issue(tmp_path / "other.json", "b")[1][len("bst_aaaaaaaaaaaa_") :]
    assert refused(ApiKeyStore(path), f"bst_{key_id}_{other_secret}") == "wrong api key secret"


def test_unknown_key_id_is_refused_after_a_dummy_compare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keys.json"
    issue(path, "a")
    _, foreign = issue(tmp_path / "elsewhere.json", "b")
    store = ApiKeyStore(path)
    calls: list[tuple[str, str]] = []
    real = api_keys.hmac.compare_digest

    def counting(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api_keys.hmac, "compare_digest", counting)
    assert refused(store, foreign) == "unknown api key"
    assert len(calls) == 1 and calls[0][1] == api_keys._DUMMY_HASH  # same work as for a known id


def test_revocation_takes_effect_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key_id, key = issue(path, "a")
    keep_id, keep = issue(path, "b")
    store = ApiKeyStore(path)
    assert store.authenticate(key).id == f"apikey:{key_id}"
    revoke(path, key_id)
    assert refused(store, key) == "revoked api key"
    assert store.authenticate(keep).id == f"apikey:{keep_id}"
    first = {r.key_id: r.revoked_at for r in list_keys(path)}[key_id]
    revoke(path, key_id)  # idempotent: the first revocation time stays
    assert {r.key_id: r.revoked_at for r in list_keys(path)}[key_id] == first
    with pytest.raises(KeyError):
        revoke(path, "aaaaaaaaaaaa")


def test_keys_issued_after_start_are_picked_up(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    issue(path, "a")
    store = ApiKeyStore(path)
    key_id, key = issue(path, "later")
    assert store.authenticate(key).id == f"apikey:{key_id}"


def test_expired_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keys.json"
    key_id, key = issue(path, "a", expires_in=dt.timedelta(hours=1))
    store = ApiKeyStore(path)
    assert store.authenticate(key).id == f"apikey:{key_id}"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1, seconds=1)
    monkeypatch.setattr(api_keys, "_now", lambda: later)
    assert refused(store, key) == "expired api key"
    with pytest.raises(ConfigError, match="expires_in must be positive"):
        issue(path, "b", expires_in=dt.timedelta(0))


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "bst_",
        "bst_abc_def",
        "xyz_aaaaaaaaaaaa_" + "A" * 43,
        "bst_AAAAAAAAAAAA_" + "A" * 43,
        "bst_aaaaaaaaaaaa_" + "A" * 42,
        "bst_aaaaaaaaaaaa_" + "A" * 44,
        "bst_aaaaaaaaaaaa_" + "A" * 42 + "=",
        "bst_aaaaaaaaaaaa_" + "A" * 42 + "\u00e9",
        "bst_aaaaaaaaaaaa_" + "A" * 4000,
    ],
)
def test_malformed_keys(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "keys.json"
    issue(path, "a")
    assert refused(ApiKeyStore(path), bad) == "malformed api key"


def test_a_broken_store_refuses_every_key_until_fixed(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key_id, key = issue(path, "a")
    store = ApiKeyStore(path)
    good = path.read_bytes()
    path.write_text('{"version": 1, "keys": [{"key_id": "x"}]}')
    assert refused(store, key) == "api key store unavailable"
    path.write_bytes(good)
    os.chmod(path, 0o600)
    assert store.authenticate(key).id == f"apikey:{key_id}"
    os.chmod(path, 0o620)  # writable by group: anyone in it could add keys
    assert refused(store, key) == "api key store unavailable"
    os.chmod(path, 0o600)
    assert store.authenticate(key).id == f"apikey:{key_id}"
    path.unlink()
    assert refused(store, key) == "unknown api key"  # no store: nothing is accepted


def test_store_must_exist_and_be_valid_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        ApiKeyStore(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    bad.chmod(0o600)
    with pytest.raises(ConfigError, match="unusable"):
        ApiKeyStore(bad)
    with pytest.raises(ConfigError, match="malformed API key store"):
        list_keys(bad)


def test_labels_are_bounded_and_printable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="principal: 1 to 128"):
        issue(tmp_path / "k.json", "")
    with pytest.raises(ConfigError, match="principal: printable"):
        issue(tmp_path / "k.json", "a\nb")
    with pytest.raises(ConfigError, match="description: 0 to 256"):
        issue(tmp_path / "k.json", "a", description="x" * 257)


def test_concurrent_issues_lose_no_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    issued: list[tuple[str, str]] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(5):
            r = issue(path, f"w{n}-{i}")
            with lock:
                issued.append(r)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {r.key_id for r in list_keys(path)} == {k for k, _ in issued}
    assert len(issued) == 30
    store = ApiKeyStore(path)
    for key_id, key in issued:
        assert store.authenticate(key).id == f"apikey:{key_id}"
