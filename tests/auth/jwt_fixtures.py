"""Real signing keys (RSA 2048, EC P-256, Ed25519), JWKS documents and JWTs (PyJWT) for the auth tests,
and a JWKS served over loopback HTTP from a thread."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ISSUER = "https://idp.example"
AUDIENCE = "bastion"


@dataclass
class Signer:
    alg: str
    kid: str | None
    private: Any

    def jwk(self, *, with_kid: bool = True) -> dict[str, Any]:
        algo = jwt.get_algorithm_by_name(self.alg)
        d: dict[str, Any] = json.loads(algo.to_jwk(self.private.public_key()))
        if with_kid and self.kid is not None:
            d["kid"] = self.kid
        return d

    def token(self, claims: dict[str, Any] | None = None, headers: dict[str, Any] | None = None, **over: Any) -> str:
        h = {"kid": self.kid} if self.kid is not None else {}
        h.update(headers or {})
        return jwt.encode(
            claims if claims is not None else make_claims(**over), self.private, algorithm=self.alg, headers=h
        )

    def public_pem(self) -> bytes:
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


def rsa_signer(kid: str | None = "rsa-1", bits: int = 2048) -> Signer:
    return Signer("RS256", kid, rsa.generate_private_key(public_exponent=65537, key_size=bits))


def ec_signer(kid: str | None = "ec-1") -> Signer:
    return Signer("ES256", kid, ec.generate_private_key(ec.SECP256R1()))


def ed_signer(kid: str | None = "ed-1") -> Signer:
    return Signer("EdDSA", kid, ed25519.Ed25519PrivateKey.generate())


def make_claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-42", "iat": now, "exp": now + 300}
    for k, v in over.items():
        if v is None:
            claims.pop(k, None)
        else:
            claims[k] = v
    return claims


def jwks(*signers: Signer, extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"keys": [s.jwk() for s in signers] + (extra or [])}


def write_jwks(path: Path, *signers: Signer, extra: list[dict[str, Any]] | None = None) -> Path:
    path.write_text(json.dumps(jwks(*signers, extra=extra)))
    return path


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def raw_token(
    header: dict[str, Any], claims: dict[str, Any], sign_key: bytes | None = None, signature: bytes = b""
) -> str:
    """A compact JWS built by hand: for tokens PyJWT refuses to make (HS256 keyed with a public key PEM)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    if sign_key is not None:
        signature = hmac.new(sign_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


class JwksServer:
    """Serves ``self.body`` at /jwks.json from a loopback HTTP server thread; counts requests."""

    def __init__(self) -> None:
        self.body = b'{"keys": []}'
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                if self.path != "/jwks.json":
                    self.send_response(302)
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"

    def publish(self, *signers: Signer) -> None:
        self.body = json.dumps(jwks(*signers)).encode()


@contextmanager
def serve_jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    t = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        t.join(5)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s
