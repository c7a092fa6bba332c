"""Authentication: every call maps to a principal (mTLS SPIFFE id, JWT issuer and subject, or API key).

``Authenticator`` (``bastion.auth.authenticator``) is what the server's security gate calls; ``Principal``
(``bastion.auth.principal``) is what it returns. Nothing here decides tenants or roles: the tenancy policy
maps a principal's ``id`` to those.
"""

from __future__ import annotations

from bastion.auth.principal import Principal

__all__ = ["Principal"]
