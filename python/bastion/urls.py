"""Which hosts count as loopback, and which service URLs bastion will talk to: the one place that says so.

``is_loopback_host(host)`` is true for the exact name ``localhost`` and for an IP literal in a loopback
range (``127.0.0.0/8``, ``::1``), and for nothing else: not ``localhost.evil.example``, not
``127.0.0.1.nip.io``, not a numeric form the resolver would read as 127.0.0.1 (``2130706433``,
``0x7f.1``). Names are compared after the URL parser's lower-casing; no name is resolved.

``check_service_url(url, field)`` raises ``ValueError`` (naming ``field``, never the URL) unless ``url`` is
``https://HOST...``, or ``http://HOST...`` with a loopback ``HOST``, has a host, a valid port, no user
information and no whitespace or control character, and whose authority is exactly that host and port
(``http://[::1].evil.example``, which ``urlsplit`` reads as host ``::1``, is refused). It returns the parsed host. Used for the OpenBao address and the JWKS URL. This module
imports nothing of bastion.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

_PORT = re.compile(r"(?::[0-9]{1,5})?")


def is_loopback_host(host: str) -> bool:
    """``localhost`` exactly, or a loopback IP literal (IPv6 without brackets)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_service_url(url: str, field: str) -> str:
    """The URL's host; ``ValueError`` unless it is https, or http to a loopback host (see the module)."""
    if not url.isprintable() or any(c.isspace() for c in url):  # urlsplit would drop tabs and newlines
        raise ValueError(f"{field} must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"{field} is not a valid URL") from None
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{field} must not carry credentials")
    # urlsplit reads "http://[::1].evil.example" as host ::1: the authority must be exactly host and port.
    literal = f"[{host}]" if ":" in host else host
    authority = parts.netloc.lower()
    if host and not (authority.startswith(literal) and _PORT.fullmatch(authority[len(literal) :])):
        raise ValueError(f"{field} is not a valid URL")
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{field} must be an https URL (http only for a loopback host)")
    if not host:
        raise ValueError(f"{field} needs a host")
    if parts.scheme == "http" and not is_loopback_host(host):
        raise ValueError(f"{field} must be https (http only for localhost or a loopback IP address)")
    return host


__all__ = ["check_service_url", "is_loopback_host"]
