"""``bastion keys create``, ``seal``, ``verify``, ``inspect``, ``rekey``: the sealed-model commands.

Errors are one line on stderr naming the file (and segment, for integrity failures), never key
material and never a traceback. Exit codes (``bastion.cli.errors``): 0 success; 1 the artifact failed a
check (integrity, wrong key, malformed header); 2 bad usage, a missing or unusable file or key (bad mode,
exists).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError

AEADS = ("aes-256-gcm", "chacha20-poly1305")
HASHES = ("blake3", "sha256")


def add_parsers(sub: Any) -> None:
    k = sub.add_parser("keys", help="key-encryption keys for sealed models")
    ksub = k.add_subparsers(dest="keys_command", required=True, metavar="SUBCOMMAND")
    kc = ksub.add_parser("create", help="write a new random 32-byte key file (mode 0600; never overwrites)")
    kc.add_argument("path", metavar="PATH")
    ks = ksub.add_parser("create-signing", help="write a new EC signing key (PEM, 0600) and PATH.pub")
    ks.add_argument("path", metavar="PATH")
    ks.add_argument("--curve", choices=("p256", "p384"), default="p256")

    s = sub.add_parser("seal", help="encrypt a safetensors model directory into a sealed directory")
    s.add_argument("src", metavar="SRC", help="Hugging Face model directory (safetensors, config, tokenizer)")
    s.add_argument("out", metavar="OUT", help="new sealed directory (must not exist)")
    s.add_argument("--key", required=True, metavar="KEK", help=KEY_HELP)
    s.add_argument("--origin", metavar="URI", help="source URI recorded (authenticated) in the header")
    s.add_argument("--sign-key", metavar="PEM", help="EC private key (P-256/384) that signs model.sig (OMS v1.0)")
    s.add_argument("--sign-cert", metavar="PEM", help="signing certificate for --sign-key (certificate bundle)")
    s.add_argument(
        "--cert-chain",
        metavar="PEM",
        action="append",
        default=[],
        help="intermediate/root certificates to embed with --sign-cert (repeatable)",
    )
    s.add_argument(
        "--unsigned",
        action="store_true",
        help="leave the directory unsigned (it loads only where the trust policy allows unsigned models)",
    )
    s.add_argument(
        "--aead",
        choices=AEADS,
        default="aes-256-gcm",
        help="chacha20-poly1305 for CPUs without AES instructions (default: aes-256-gcm)",
    )
    s.add_argument("--hash", choices=HASHES, default="blake3", help="segment hash (default: blake3)")
    s.add_argument(
        "--segment-size",
        type=int,
        default=1 << 20,
        metavar="BYTES",
        help="power of two, 64 KiB to 64 MiB (default: 1 MiB)",
    )

    v = sub.add_parser(
        "verify",
        help="check model.sig against a trust policy, every signed digest and every "
        "ciphertext segment (no data key needed)",
    )
    v.add_argument("dir", metavar="DIR")
    v.add_argument("--policy", required=True, metavar="TOML", help="trust policy (bastion.weights.policy)")
    v.add_argument(
        "--model-name",
        metavar="NAME",
        help="served model name the policy is matched against (default: the directory name)",
    )
    v.add_argument(
        "--key", metavar="KEK", help="also unwrap the data key and authenticate and decrypt every segment; " + KEY_HELP
    )

    i = sub.add_parser("inspect", help="print a sealed directory's header as JSON (no secrets)")
    i.add_argument("dir", metavar="DIR")

    r = sub.add_parser("rekey", help="rewrap a sealed model's data key under a new key file")
    r.add_argument("dir", metavar="DIR")
    r.add_argument("--old-key", required=True, metavar="KEK", help=KEY_HELP)
    r.add_argument("--new-key", required=True, metavar="KEK", help=KEY_HELP + " (a model can move between providers)")
    r.add_argument(
        "--sign-key",
        metavar="PEM",
        help="re-sign model.sig after the rewrap (it covers weights.ctxh); required when the directory is signed",
    )
    r.add_argument("--sign-cert", metavar="PEM", help="signing certificate for --sign-key")
    r.add_argument("--cert-chain", metavar="PEM", action="append", default=[], help="chain for --sign-cert")


KEY_HELP = "a key file (bastion keys create), or config:FILE for the key provider FILE's [weights] configures"


def _usable_key(spec: str) -> Any:
    """``spec``: a KEK file, or ``config:FILE`` (the provider in FILE's ``[weights]``: file, openbao, pkcs11)."""
    from bastion.keys import FileKeyProvider, provider_from_settings

    if spec.startswith("config:"):
        from bastion.config import load_settings

        provider = provider_from_settings(load_settings(spec[len("config:") :]).weights)
    else:
        provider = FileKeyProvider(spec)
    provider.check()
    return provider


def _sealed_dir(path: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"not a directory: {p}")
    if not (p / "weights.ctxh").is_file():
        raise ConfigError(f"not a sealed model directory (no weights.ctxh): {p}")
    return p


def _cmd_keys(args: argparse.Namespace) -> int:
    from bastion.keys import FileKeyProvider

    if args.keys_command == "create-signing":
        from bastion.weights.signing import create_signing_key

        pub = create_signing_key(args.path, args.curve)
        print(f"created {args.path} (EC {args.curve}, mode 0600; keep it secret) and {pub} (give this to verifiers)")
        return 0
    provider = FileKeyProvider.create(args.path)
    print(f"created {provider.path} (32 random bytes, mode 0600); keep it secret and backed up")
    return 0


def _cmd_seal(args: argparse.Namespace) -> int:
    from bastion.digest import digest_dir

    src, out = Path(args.src), Path(args.out)
    if not src.is_dir():
        raise ConfigError(f"not a directory: {src}")
    if out.exists() or out.is_symlink():
        raise ConfigError(f"output already exists: {out}")
    if not args.sign_key and not args.unsigned:
        raise ConfigError("--sign-key is required (or --unsigned, for a directory only a lax policy would load)")
    if args.sign_cert and not args.sign_key:
        raise ConfigError("--sign-cert needs --sign-key")
    from bastion.cli.progress import watch

    provider = _usable_key(args.key)
    origin = {"source_uri": args.origin} if args.origin else None
    total = sum(p.stat().st_size for p in src.glob("*.safetensors"))

    def written() -> int:  # ciphertext so far: in the staging directory, then in OUT once renamed
        staged = [*out.parent.glob(f".{out.name}.sealing-*/*.ctxd"), *out.glob("*.ctxd")]
        return sum(p.stat().st_size for p in staged if p.exists())

    with watch("sealing", total, written):
        report = provider.seal(src, out, aead=args.aead, hash=args.hash, segment_size=args.segment_size, origin=origin)
    signed = "unsigned"
    if args.sign_key:
        from bastion.weights.signing import sign_dir

        with watch("signing (SHA-256 of every file)", sum(p.stat().st_size for p in out.iterdir()), None):
            sign_dir(out, private_key=args.sign_key, certificate=args.sign_cert, chain=args.cert_chain)
        signed = f"signed {out / 'model.sig'} (OMS v1.0)"
    digest = digest_dir(out).digest
    print(
        f"sealed {report.tensors} tensors ({report.bytes / 2**20:.1f} MiB in {report.files} data files) "
        f"into {out}\nheader digest {args.hash}:{report.header_digest}\ndirectory digest {digest}\n"
        f"copied plaintext: {', '.join(report.copied) or '(none)'}\n{signed}"
    )
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from bastion.weights import verify_ciphertext
    from bastion.weights.policy import load_policy
    from bastion.weights.signing import HEADER_FILE, check_files, verify_sealed

    path = _sealed_dir(args.dir)
    policy = load_policy(args.policy)
    name = args.model_name or path.resolve().name
    header = (path / HEADER_FILE).read_bytes()
    manifest = verify_sealed(path, policy, name, header_file=header, origin=_header_origin(path, header))
    if manifest is None:
        sig = f"UNSIGNED (the policy allows {name!r} unsigned)"
    else:
        files = check_files(path, manifest)  # every signed file, data files included, hashed in full
        sig = (
            f"model.sig by {manifest.signer} ({manifest.identity}) allowed for {name!r}; {files} files match "
            f"the signed manifest; OMS digest {manifest.model_digest}"
        )
    if args.key:
        provider = _usable_key(args.key)
        with provider.open(path) as reader:
            rep = reader.verify_all()
        what = "hashes match weights.ctxh and every segment authenticates and decrypts under the key"
    else:
        rep = verify_ciphertext(path)
        what = "ciphertext hashes match weights.ctxh (no data key used)"
    print(f"OK {path}: {sig}\n{rep.files} data files, {rep.segments} segments, {rep.bytes / 2**20:.1f} MiB: {what}")
    return 0


def _header_origin(path: Path, header: bytes) -> str | None:
    from bastion.weights import inspect
    from bastion.weights.sealed import header_json

    inspect(path)  # validates the header (FormatError) before its JSON is trusted for the origin
    origin: str | None = (header_json(header).get("origin") or {}).get("source_uri")
    return origin


def _cmd_inspect(args: argparse.Namespace) -> int:
    from bastion.weights import inspect

    header = inspect(_sealed_dir(args.dir))
    header.get("key", {}).pop("wrapped_dek", None)  # never printed (inspect already leaves it out)
    json.dump(header, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


def _cmd_rekey(args: argparse.Namespace) -> int:
    from bastion.weights import inspect, rekey

    path = _sealed_dir(args.dir)
    old, new = _usable_key(args.old_key), _usable_key(args.new_key)
    if old.describe() == new.describe():
        raise ConfigError("--old-key and --new-key are the same key")
    signed = (path / "model.sig").exists()
    if signed and not args.sign_key:
        raise ConfigError("this directory is signed and rekeying rewrites weights.ctxh: pass --sign-key to re-sign it")
    before = inspect(path)["key"]["key_id"]
    rekey(path, old, new)  # a file provider is os.PathLike (Rust reads the KEK); others wrap through their service
    after = inspect(path)["key"]["key_id"]
    resigned = ""
    if args.sign_key:
        from bastion.weights.signing import sign_dir

        sign_dir(path, private_key=args.sign_key, certificate=args.sign_cert, chain=args.cert_chain)
        resigned = "; model.sig re-signed"
    print(f"rekeyed {path}: key {before} -> {after}; data files unchanged; the old key no longer opens it{resigned}")
    return 0


# Errors propagate to bastion.cli.main, which maps them through the one table (bastion.cli.errors).
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "keys": _cmd_keys,
    "seal": _cmd_seal,
    "verify": _cmd_verify,
    "inspect": _cmd_inspect,
    "rekey": _cmd_rekey,
}
