"""Signed bundles (testbed.signing, testbed.signcmd): a lab's Ed25519 key, manifest.sig beside
manifest.json, and its check against trusted public keys.

Every refusal is one line naming the bundle or the key file and what was expected (exit 2 through the
CLI's error path), and the private key never appears in any output."""
from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import json
import os
import stat
from pathlib import Path

import pytest
import torch

from linkemu.errors import HarnessError
from testbed.bundle import MANIFEST, BundleError, export_bundle, load_manifest
from testbed.errors import ConfigError
from testbed.model import StudentsConfig, UnifiedStudents
from testbed.signcmd import add_sign_commands
from testbed.signing import (PUBLIC_PREFIX, SIGNATURE, SignatureError, fingerprint, generate_key, load_private_key,
                             load_trusted, sign_bundle, verify_bundle)
import testbed.signing as signing


def _main(argv: list[str]) -> tuple[int, str, str]:
    """The sign commands through the same error path as testbed.cli.main: (exit code, stdout, stderr)."""
    parser = argparse.ArgumentParser(prog="testbed")
    add_sign_commands(parser.add_subparsers(dest="command", required=True))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        args = parser.parse_args(argv)
        try:
            code = int(args.func(args))
        except HarnessError as exc:
            print(f"testbed: error: {exc}", file=err)
            code = exc.exit_code
    return code, out.getvalue(), err.getvalue()


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text and len(text) < 600, text
    return text


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bundle from the project's own writer (untrained students: the bytes are what count), with
    the experiment copy a partition bundle carries, its sha256 in the manifest."""
    torch.manual_seed(0)
    cfg = StudentsConfig(dataset="digits", input_shape=(1, 8, 8), num_classes=10, students=2, width=4, out_dim=4,
                         epochs=0, batch_size=8, lr=0.01, subset=None, seed=0)
    out = export_bundle(UnifiedStudents(cfg, mean=0.0, std=1.0), cfg, out_dir=tmp_path_factory.mktemp("bundle"),
                        evaluation={"test_accuracy": 0.1}, classes=tuple(str(c) for c in range(10)))
    (out / "experiment.yaml").write_text("name: t\nseed: 0\ndataset: {name: digits}\n")
    m = json.loads((out / MANIFEST).read_text())
    m["experiment"] = {"name": "t", "file": "experiment.yaml", "copy": "experiment.yaml",
                       "sha256": hashlib.sha256((out / "experiment.yaml").read_bytes()).hexdigest()}
    (out / MANIFEST).write_text(json.dumps(m, indent=2))
    load_manifest(out)
    return out


@pytest.fixture
def bundle(exported: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "bundle"
    dest.mkdir()
    for f in exported.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two labs' keys, outside every bundle."""
    home = tmp_path_factory.mktemp("keys")
    made = {}
    for name in ("lab", "other"):
        generate_key(home / f"{name}.key", comment=f"{name} key")
        made[name] = home / f"{name}.key"
    return made


def _pub(key: Path) -> Path:
    return key.with_name(key.name + ".pub")


def _secrets(key: Path) -> list[str]:
    """Strings that would betray ``key``: its PEM body lines and its raw 32-byte seed in base64 and hex."""
    from cryptography.hazmat.primitives import serialization as ser
    lab = load_private_key(key)
    seed = lab._key.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw, ser.NoEncryption())
    body = [ln for ln in key.read_text().splitlines() if ln and not ln.startswith("-----")]
    return [*body, base64.b64encode(seed).decode(), seed.hex()]


# -- keygen ------------------------------------------------------------------------------------

def test_keygen_writes_a_0600_private_key_and_a_one_line_public_key(tmp_path: Path) -> None:
    code, out, err = _main(["keygen", "--out", str(tmp_path / "lab.key"), "--comment", "bench A"])
    assert code == 0, err
    key, pub = tmp_path / "lab.key", tmp_path / "lab.key.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    lines = pub.read_text().splitlines()
    assert len(lines) == 1
    prefix, b64, comment = lines[0].split(" ", 2)
    assert (prefix, comment) == (PUBLIC_PREFIX, "bench A")
    raw = base64.b64decode(b64, validate=True)
    assert len(raw) == 32 and load_private_key(key).public_raw == raw
    fp = fingerprint(raw)
    assert fp == "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    assert f"fingerprint {fp}" in out
    assert load_trusted([pub])[0].describe() == f"{fp} (bench A)"
    assert not any(s in out + err for s in _secrets(key))


@pytest.mark.parametrize("existing", ["lab.key", "lab.key.pub"])
def test_keygen_refuses_to_overwrite_either_file(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("someone's file\n")
    code, out, err = _main(["keygen", "--out", str(tmp_path / "lab.key")])
    assert code == 2
    assert err.count("\n") == 1 and f"{tmp_path / existing}: exists; expected a new file" in err
    assert (tmp_path / existing).read_text() == "someone's file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]     # the other one was not made either


def test_keygen_warns_when_the_key_lands_in_a_bench_folder(tmp_path: Path) -> None:
    (tmp_path / "inventory.yaml").write_text("bench: b\n")
    code, _, err = _main(["keygen", "--out", str(tmp_path / "lab.key"), "--json"])
    assert code == 0 and "warning:" in err and "inventory.yaml" in err


# -- sign and verify -----------------------------------------------------------------------------

def test_sign_and_verify_round_trip_on_an_exported_bundle(bundle: Path, keys: dict[str, Path]) -> None:
    sig_path = sign_bundle(bundle, keys["lab"])
    assert sig_path == bundle / SIGNATURE
    doc = json.loads(sig_path.read_text())
    lab = load_private_key(keys["lab"])
    assert doc == {"format": 1, "algorithm": "ed25519", "public_key": base64.b64encode(lab.public_raw).decode(),
                   "fingerprint": lab.fingerprint, "signature": doc["signature"]}
    assert len(base64.b64decode(doc["signature"])) == 64
    signer = verify_bundle(bundle, trusted=[_pub(keys["lab"])])
    assert (signer.fingerprint, signer.comment) == (lab.fingerprint, "lab key")
    assert signer.manifest_sha256 == hashlib.sha256((bundle / MANIFEST).read_bytes()).hexdigest()
    assert signer.trusted_file == f"{_pub(keys['lab'])}:1"
    assert load_manifest(bundle)["students"] == 2           # the signature changes nothing the loader reads
    code, out, err = _main(["verify", str(bundle), "--trusted", str(_pub(keys["lab"])), "--json"])
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["signer"]["fingerprint"] == lab.fingerprint
    assert "3 shard files verified" in err


def test_a_byte_changed_in_the_manifest_is_refused(bundle: Path, keys: dict[str, Path]) -> None:
    sign_bundle(bundle, keys["lab"])
    data = bytearray((bundle / MANIFEST).read_bytes())
    i = data.index(b'"test_accuracy": 0.1') + len(b'"test_accuracy": 0.')
    data[i] = ord("9")                                       # still a valid manifest: only the signature knows
    (bundle / MANIFEST).write_bytes(bytes(data))
    load_manifest(bundle)
    with pytest.raises(SignatureError) as e:
        verify_bundle(bundle, trusted=[_pub(keys["lab"])])
    msg = _one_line(e.value)
    assert msg.startswith(f"{bundle}: bad signature: manifest.json was changed after ")
    assert load_private_key(keys["lab"]).fingerprint in msg and e.value.exit_code == 2


def test_a_changed_shard_is_caught_by_the_signed_manifests_hash(bundle: Path, keys: dict[str, Path]) -> None:
    """The signature covers manifest.json; the shards are covered through its sha256s, which
    load_manifest checks right after (the run path calls both, in that order)."""
    sign_bundle(bundle, keys["lab"])
    shard = bundle / "student_1.ts"
    shard.write_bytes(shard.read_bytes() + b"\0")
    verify_bundle(bundle, trusted=[_pub(keys["lab"])])
    with pytest.raises(BundleError, match="student_1.ts: sha256 .* does not match the manifest"):
        load_manifest(bundle)
    code, _, err = _main(["verify", str(bundle), "--trusted", str(_pub(keys["lab"]))])
    assert code == 2 and err.count("\n") == 1 and "student_1.ts" in err


def test_a_changed_experiment_copy_is_refused(bundle: Path, keys: dict[str, Path]) -> None:
    sign_bundle(bundle, keys["lab"])
    (bundle / "experiment.yaml").write_text("name: t\nseed: 0\ndataset: {name: digits, path: /elsewhere}\n")
    with pytest.raises(SignatureError) as e:
        verify_bundle(bundle, trusted=[_pub(keys["lab"])])
    assert "experiment.yaml: sha256" in _one_line(e.value) and "modified after it was signed" in str(e.value)


def test_sign_refuses_a_manifest_whose_experiment_copy_it_would_not_cover(bundle: Path,
                                                                            keys: dict[str, Path]) -> None:
    m = json.loads((bundle / MANIFEST).read_text())
    del m["experiment"]["sha256"]
    (bundle / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(SignatureError) as e:
        sign_bundle(bundle, keys["lab"])
    assert "experiment.sha256: expected the sha256 of experiment.yaml" in _one_line(e.value)
    assert not (bundle / SIGNATURE).exists()


def test_a_signature_by_another_key_is_refused_with_its_fingerprint(bundle: Path, keys: dict[str, Path]) -> None:
    sign_bundle(bundle, keys["other"])
    with pytest.raises(SignatureError) as e:
        verify_bundle(bundle, trusted=[_pub(keys["lab"])])
    msg = _one_line(e.value)
    other, lab = load_private_key(keys["other"]).fingerprint, load_private_key(keys["lab"]).fingerprint
    assert msg == f"{bundle}: signed by an untrusted key {other}; expected a signature by {lab} (lab key)"


def test_a_list_of_keys_trusts_each_of_them(bundle: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    listing = tmp_path / "trusted_keys"
    listing.write_text("# the lab's signers\n\n" + _pub(keys["lab"]).read_text() + _pub(keys["other"]).read_text())
    sign_bundle(bundle, keys["other"])
    signer = verify_bundle(bundle, trusted=[listing])
    assert signer.comment == "other key" and signer.trusted_file == f"{listing}:4"


def test_an_unsigned_bundle_is_refused_when_a_signature_is_required(bundle: Path, keys: dict[str, Path]) -> None:
    with pytest.raises(SignatureError) as e:
        verify_bundle(bundle, trusted=[_pub(keys["lab"])])
    assert _one_line(e.value) == (f"{bundle}: unsigned bundle (no manifest.sig); expected one signed by a trusted "
                                  f"key (testbed partition --sign KEY)")
    with pytest.raises(ConfigError, match="no trusted key given"):
        verify_bundle(bundle, trusted=[])


GARBAGE = {
    "not json": b"\x00\xffnot json at all",
    "a list": b"[1, 2, 3]",
    "huge": b'{"format": 1, "pad": "' + b"x" * (1 << 20) + b'"}',
    "deep": b"[" * 8000 + b"]" * 8000,             # under the size bound: the parser's depth refuses it
    "format a string": {"format": "1"},
    "format true": {"format": True},
    "algorithm rsa": {"algorithm": "rsa"},
    "public key a number": {"public_key": 7},
    "public key short": {"public_key": base64.b64encode(b"k" * 31).decode()},
    "public key not base64": {"public_key": "!" * 44},
    "signature a list": {"signature": ["a"]},
    "signature short": {"signature": base64.b64encode(b"s" * 63).decode()},
    "fingerprint of another key": {"fingerprint": "SHA256:" + "A" * 43},
}


@pytest.mark.parametrize("case", list(GARBAGE))
def test_a_malformed_signature_is_refused_in_one_line(bundle: Path, keys: dict[str, Path], case: str) -> None:
    sign_bundle(bundle, keys["lab"])
    bad = GARBAGE[case]
    if isinstance(bad, dict):
        doc = json.loads((bundle / SIGNATURE).read_text())
        doc.update(bad)
        bad = json.dumps(doc).encode()
    (bundle / SIGNATURE).write_bytes(bad)
    with pytest.raises(SignatureError) as e:
        verify_bundle(bundle, trusted=[_pub(keys["lab"])])
    assert _one_line(e.value).startswith(f"{bundle / SIGNATURE}: ")
    code, out, err = _main(["verify", str(bundle), "--trusted", str(_pub(keys["lab"]))])
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("testbed: error: ")


def test_a_signature_that_is_a_link_out_of_the_bundle_is_refused(bundle: Path, keys: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    sign_bundle(bundle, keys["lab"])
    outside = tmp_path / "elsewhere.sig"
    os.replace(bundle / SIGNATURE, outside)
    (bundle / SIGNATURE).symlink_to(outside)
    with pytest.raises(BundleError) as e:
        verify_bundle(bundle, trusted=[_pub(keys["lab"])])
    assert "leads out of the bundle" in _one_line(e.value)


# -- key files are input too ---------------------------------------------------------------------

def test_a_private_key_given_as_trusted_is_refused_without_echoing_it(bundle: Path, keys: dict[str, Path]) -> None:
    sign_bundle(bundle, keys["lab"])
    with pytest.raises(ConfigError) as e:
        verify_bundle(bundle, trusted=[keys["lab"]])
    msg = _one_line(e.value)
    assert msg.startswith(f"{keys['lab']}: is a private key; expected the public key (KEY.pub)")
    assert not any(s in msg for s in _secrets(keys["lab"]))


@pytest.mark.parametrize("content, expected", [
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== me@host\n", "1: an OpenSSH public key of another kind"),
    (f"# comment\n{PUBLIC_PREFIX} not-base64 x\n", "2: the key is not base64 of 32 bytes"),
    ("# only comments\n\n", "holds no key"),
    ("\xff\xfe garbage", "is not UTF-8 text"),
])
def test_a_bad_public_key_file_is_refused_naming_file_and_line(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "lab.key.pub"
    path.write_bytes(content.encode("latin-1") if "\xff" in content else content.encode())
    with pytest.raises(ConfigError) as e:
        load_trusted([path])
    assert _one_line(e.value).startswith(f"{path}:") and expected in str(e.value)


def test_a_public_key_given_to_sign_is_refused(bundle: Path, keys: dict[str, Path]) -> None:
    with pytest.raises(ConfigError) as e:
        sign_bundle(bundle, _pub(keys["lab"]))
    assert "is not a private key" in _one_line(e.value) and "--require-signed" in str(e.value)
    assert not (bundle / SIGNATURE).exists()


def test_a_private_key_others_can_read_is_refused(tmp_path: Path) -> None:
    generate_key(tmp_path / "lab.key")
    (tmp_path / "lab.key").chmod(0o644)
    with pytest.raises(ConfigError) as e:
        load_private_key(tmp_path / "lab.key")
    assert "can be read by others (mode 0644)" in _one_line(e.value) and "chmod 600" in str(e.value)


def test_a_key_inside_the_bundle_is_refused_for_signing_and_for_trust(bundle: Path, keys: dict[str, Path]) -> None:
    inside = bundle / "lab.key"
    inside.write_bytes(keys["lab"].read_bytes())
    inside.chmod(0o600)
    with pytest.raises(ConfigError, match="is inside the bundle"):
        sign_bundle(bundle, inside)
    sign_bundle(bundle, keys["lab"])
    (bundle / "lab.key.pub").write_bytes(_pub(keys["lab"]).read_bytes())
    with pytest.raises(ConfigError, match="a key shipped with a bundle proves nothing"):
        verify_bundle(bundle, trusted=[bundle / "lab.key.pub"])


def test_an_existing_signature_is_replaced_only_when_asked(bundle: Path, keys: dict[str, Path]) -> None:
    sign_bundle(bundle, keys["lab"])
    with pytest.raises(BundleError, match="manifest.sig: exists"):
        sign_bundle(bundle, keys["other"])
    sign_bundle(bundle, keys["other"], replace=True)
    assert verify_bundle(bundle, trusted=[_pub(keys["other"])]).comment == "other key"


def test_the_private_key_never_appears_in_any_output(bundle: Path, tmp_path: Path) -> None:
    key = tmp_path / "keys" / "lab.key"
    key.parent.mkdir()
    outputs = list(_main(["keygen", "--out", str(key), "--json"])[1:])
    outputs += _main(["keygen", "--out", str(key)])[1:]                          # refused
    sign_bundle(bundle, key)
    outputs += _main(["verify", str(bundle), "--trusted", str(_pub(key)), "--json"])[1:]
    outputs += _main(["verify", str(bundle), "--trusted", str(key)])[1:]            # private for public
    outputs.append(repr(load_private_key(key)))
    outputs.append((bundle / SIGNATURE).read_text())
    key.chmod(0o640)
    with pytest.raises(ConfigError) as e:
        load_private_key(key)
    outputs.append(str(e.value))
    text = "\n".join(outputs)
    assert "PRIVATE KEY" not in text
    assert not any(s in text for s in _secrets_of_file(key))


def _secrets_of_file(key: Path) -> list[str]:
    mode = key.stat().st_mode
    key.chmod(0o600)
    try:
        return _secrets(key)
    finally:
        key.chmod(stat.S_IMODE(mode))


def test_the_manifest_name_and_bounds_agree_with_the_bundle_module() -> None:
    import testbed.bundle as bundle_mod
    assert signing.MANIFEST == bundle_mod.MANIFEST
    assert signing.MAX_MANIFEST_BYTES == bundle_mod.MAX_MANIFEST_BYTES
