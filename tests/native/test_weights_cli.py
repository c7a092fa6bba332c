"""`bastion keys`, `seal`, `verify`, `inspect`, `rekey` as a user runs them: exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bastion.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def sealed(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Path]:
    k = {
        "kek": tmp_path / "kek",
        "sign": tmp_path / "sign.pem",
        "out": tmp_path / "sealed",
        "policy": tmp_path / "p.toml",
    }
    assert run(capsys, "keys", "create", str(k["kek"]))[0] == 0
    assert run(capsys, "keys", "create-signing", str(k["sign"]))[0] == 0
    code, out, err = run(
        capsys,
        "seal",
        str(model),
        str(k["out"]),
        "--key",
        str(k["kek"]),
        "--sign-key",
        str(k["sign"]),
        "--origin",
        "file:///models/src",
        "--segment-size",
        "65536",
    )
    assert code == 0, err
    assert "signed" in out and "model.sig" in out
    k["policy"].write_text(
        f'[[signer]]\nname = "ci"\npublic_key = "{k["sign"]}.pub"\nmodels = ["*"]\norigins = ["file:///models/*"]\n'
    )
    return k


def test_seal_then_verify_without_and_with_the_data_key(
    sealed: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "verify", str(sealed["out"]), "--policy", str(sealed["policy"]))
    assert code == 0, err
    assert out.startswith(f"OK {sealed['out']}: model.sig by ci (sha256:") and "OMS digest sha256:" in out
    assert "6 files match the signed manifest" in out  # data file, header, config, tokenizer config, template
    code, out, err = run(
        capsys, "verify", str(sealed["out"]), "--policy", str(sealed["policy"]), "--key", str(sealed["kek"])
    )
    assert code == 0, err
    assert "authenticates and decrypts under the key" in out


def test_verify_refuses_tamper_untrusted_signer_and_origin(
    sealed: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = sealed["out"] / "weights-00001.ctxd"
    b = bytearray(data.read_bytes())
    b[70000] ^= 0x80
    data.write_bytes(bytes(b))
    code, _, err = run(capsys, "verify", str(sealed["out"]), "--policy", str(sealed["policy"]))
    assert code == 1 and "weights-00001.ctxd: digest does not match model.sig" in err and "Traceback" not in err
    data.write_bytes(bytes(b[:70000]) + bytes([b[70000] ^ 0x80]) + bytes(b[70001:]))

    other = tmp_path / "other.pem"
    assert run(capsys, "keys", "create-signing", str(other))[0] == 0
    untrusted = tmp_path / "untrusted.toml"
    untrusted.write_text(f'[[signer]]\nname = "x"\npublic_key = "{other}.pub"\nmodels = ["*"]\n')
    code, _, err = run(capsys, "verify", str(sealed["out"]), "--policy", str(untrusted))
    assert code == 1 and "not signed by any signer the trust policy allows" in err

    origin = tmp_path / "origin.toml"
    origin.write_text(
        f'[[signer]]\nname = "ci"\npublic_key = "{sealed["sign"]}.pub"\nmodels = ["*"]\norigins = ["hf://*"]\n'
    )
    code, _, err = run(capsys, "verify", str(sealed["out"]), "--policy", str(origin))
    assert code == 1 and "origin file:///models/src is not allowed for signer ci" in err


def test_seal_needs_a_signing_key_and_inspect_hides_the_wrapped_key(
    model: Path, sealed: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "seal", str(model), str(tmp_path / "x"), "--key", str(sealed["kek"]))
    assert code == 2 and "--sign-key is required" in err and not (tmp_path / "x").exists()
    code, out, _ = run(capsys, "inspect", str(sealed["out"]))
    header = json.loads(out)
    assert code == 0 and header["origin"]["source_uri"] == "file:///models/src" and "wrapped_dek" not in header["key"]


def test_rekey_then_the_old_key_no_longer_opens(
    sealed: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = tmp_path / "new.kek"
    assert run(capsys, "keys", "create", str(new))[0] == 0
    rekey = ("rekey", str(sealed["out"]), "--old-key", str(sealed["kek"]), "--new-key", str(new))
    # the signature covers weights.ctxh, which rekeying rewrites: refused (nothing changed) without --sign-key
    before = (sealed["out"] / "weights.ctxh").read_bytes()
    code, _, err = run(capsys, *rekey)
    assert code == 2 and "pass --sign-key" in err and (sealed["out"] / "weights.ctxh").read_bytes() == before
    code, out, err = run(capsys, *rekey, "--sign-key", str(sealed["sign"]))
    assert code == 0 and "model.sig re-signed" in out, err
    code, _, err = run(
        capsys, "verify", str(sealed["out"]), "--policy", str(sealed["policy"]), "--key", str(sealed["kek"])
    )
    assert code == 1 and "DEK unwrap failed" in err
    code, out, err = run(capsys, "verify", str(sealed["out"]), "--policy", str(sealed["policy"]), "--key", str(new))
    assert code == 0 and "authenticates and decrypts under the key" in out, err


def test_progress_line_redraws_while_the_work_runs() -> None:
    import io
    import time

    from bastion.cli.progress import watch

    out = io.StringIO()
    done = [0]
    with watch("sealing", 4 << 20, lambda: done[0], out=out, interval=0.01, force=True):
        for step in range(1, 5):
            done[0] = step << 20
            time.sleep(0.05)
    text = out.getvalue()
    assert "\rsealing:  25% 1 MiB/4 MiB" in text or "\rsealing:  50% 2 MiB/4 MiB" in text
    assert text.rstrip().splitlines()[-1].lstrip("\r").startswith("sealing: 4 MiB in ")
