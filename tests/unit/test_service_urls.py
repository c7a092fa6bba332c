"""Service URLs (the OpenBao address, the JWKS URL): https, or http only to ``localhost`` or a loopback IP
literal, decided by parsing the URL, never by a prefix test (red-team finding: ``http://localhost.evil.com``
passed as loopback)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bastion.config import OpenBaoSettings, is_loopback
from bastion.errors import ConfigError
from bastion.keys.openbao import OpenBaoTransitProvider
from bastion.urls import check_service_url, is_loopback_host

# Plain http that must be refused: look-alike names, user information hiding the real host, numeric forms a
# resolver may read as 127.0.0.1, whitespace urlsplit would silently drop.
REFUSED_HTTP = [
    "http://localhost.evil.com:8200",
    "http://localhost.evil.com",
    "http://localhost-evil.com",
    "http://localhost:8200@evil.com",
    "http://127.0.0.1@evil.com:8200",
    "http://127.0.0.1.nip.io:8200",
    "http://127.evil.com",
    "http://[::1].evil.com",
    "http://2130706433:8200",
    "http://0x7f.1:8200",
    "http://10.0.0.1:8200",
    "http://local\thost:8200",
    "http://openbao.internal:8200",
]
REFUSED_OTHER = [
    "ftp://127.0.0.1/",
    "file:///run/openbao.sock",
    "https://user:pw@openbao.example",
    "https://:8200",
    "https://openbao.example:99999",
    "openbao.example:8200",
    "",
]
ACCEPTED = [
    "https://openbao.example:8200",
    "https://localhost.evil.com:8200",  # https: the certificate decides
    "http://localhost:8200",
    "HTTP://LOCALHOST:8200",
    "http://127.0.0.1:8200",
    "http://127.0.0.2:8200",
    "http://[::1]:8200",
]


@pytest.mark.parametrize("addr", REFUSED_HTTP + REFUSED_OTHER)
def test_openbao_address_refused(addr: str) -> None:
    with pytest.raises(ConfigError, match="weights.openbao.addr") as ei:
        OpenBaoTransitProvider(addr, "k")
    assert "evil" not in str(ei.value)  # the message names the setting, never echoes the URL


@pytest.mark.parametrize("addr", ACCEPTED)
def test_openbao_address_accepted(addr: str) -> None:
    assert OpenBaoTransitProvider(addr, "k").addr == addr


@pytest.mark.parametrize("addr", REFUSED_HTTP + REFUSED_OTHER[:-1])
def test_openbao_settings_refuse_the_address_at_load(addr: str) -> None:
    with pytest.raises(ValidationError, match="weights.openbao.addr"):
        OpenBaoSettings(addr=addr, key="k")


def test_one_loopback_rule() -> None:
    for host in ("localhost", "127.0.0.1", "127.255.0.9", "::1"):
        assert is_loopback_host(host) and is_loopback(host)
    for host in ("localhost.evil.com", "localhost.", "127.0.0.1.nip.io", "2130706433", "0x7f.1", "10.0.0.1", ""):
        assert not is_loopback_host(host) and not is_loopback(host)
    assert check_service_url("http://[::1]:8200/v1", "x") == "::1"
