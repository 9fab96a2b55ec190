"""Signed bundles: an Ed25519 key per lab, ``manifest.sig`` beside ``manifest.json``, and its check.

Holds ``generate_key`` (``testbed keygen``: the private key in OpenSSH format, mode 0600, and its
one-line public key ``hbc-testbed-ed25519 <base64 raw key> <comment>``), ``load_private_key`` (the
signing side), ``load_trusted`` (public key files: one key, or an authorized-keys style list of
them), ``sign_bundle`` (writes ``manifest.sig``: the signature over the exact bytes of
``manifest.json``) and ``verify_bundle`` (checks it against the trusted keys and returns the
``Signer``). What a signature covers: ``manifest.json`` byte for byte, and through it every file
whose sha256 the manifest records (every shard and alternate, which ``testbed.bundle.load_manifest``
checks, and the experiment copy, which ``verify_bundle`` checks itself); a file the manifest does
not name is never loaded or copied. It does not stop an older genuine bundle being passed off as
the newest one (no expiry, no revocation list).

``manifest.sig`` and trusted key files are untrusted input: sizes bounded, types checked, one-line
errors (``SignatureError``, a ``BundleError``; key files ``ConfigError``; both exit 2) naming the
bundle or file and what was expected, never a traceback and never a key file's content. It reads
the bundle and writes only ``manifest.sig`` (and, for ``generate_key``, the two key files it creates);
it loads nothing of the bundle and must not import torch. ``cryptography`` is imported when a key
is used, so the CLI builds without it.
"""
from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import json
import os
import re
import socket
import stat
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.errors import ConfigError, TestbedError
from testbed.hashing import sha256_file
from testbed.manifest import BundleError, bundle_file

__all__ = ["SIGNATURE", "PUBLIC_PREFIX", "SignatureError", "LabKey", "TrustedKey", "Signer", "fingerprint",
           "generate_key", "load_private_key", "load_trusted", "sign_bundle", "verify_bundle"]

MANIFEST = "manifest.json"           # testbed.bundle.MANIFEST (that module imports torch; this one must not)
SIGNATURE = "manifest.sig"
SIG_FORMAT = 1
ALGORITHM = "ed25519"
PUBLIC_PREFIX = "hbc-testbed-ed25519"
MAX_SIG_BYTES = 16 << 10             # a real manifest.sig is about 300 bytes
MAX_MANIFEST_BYTES = 16 << 20        # testbed.bundle.MAX_MANIFEST_BYTES
MAX_KEY_FILE_BYTES = 1 << 20
MAX_TRUSTED_KEYS = 1000
MAX_COMMENT = 200
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_PUBLIC_HINT = f"'{PUBLIC_PREFIX} <base64 of the 32-byte key> [comment]' (testbed keygen writes KEY.pub)"


class SignatureError(BundleError):
    """A bundle's signature is missing, malformed, by a key not trusted, or does not match (exit 2)."""


def fingerprint(raw: bytes) -> str:
    """``SHA256:`` + base64 (unpadded) of the sha256 of the raw 32-byte public key. (OpenSSH's
    ``ssh-keygen -l`` hashes its wire encoding of the key instead, so the two differ.)"""
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise TestbedError("signing bundles needs the cryptography package (it comes with asyncssh); "
                           "expected `pip install 'hbc-testbed[train]'` or `pip install cryptography`") from None
    return ed25519


@dataclass(frozen=True)
class LabKey:
    """A loaded private key: sign with it; its public half as raw bytes. Its repr shows no secret."""

    path: Path
    public_raw: bytes
    _key: Any

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_raw)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def __repr__(self) -> str:
        return f"LabKey({str(self.path)!r}, {self.fingerprint})"


@dataclass(frozen=True)
class TrustedKey:
    """One trusted public key: raw bytes, its comment, and where it was read (file, and file:line)."""

    public_raw: bytes
    comment: str
    path: Path
    source: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_raw)

    def describe(self) -> str:
        return self.fingerprint + (f" ({self.comment})" if self.comment else "")


@dataclass(frozen=True)
class Signer:
    """Who signed a verified bundle: the trusted key that matched, and the manifest's sha256 as
    verified (a caller may compare it with the manifest it goes on to load)."""

    bundle_dir: Path
    fingerprint: str
    comment: str
    trusted_file: str
    manifest_sha256: str

    def describe(self) -> str:
        return self.fingerprint + (f" ({self.comment})" if self.comment else "")

    def record(self) -> dict[str, str]:
        """For run.json / summaries: never anything secret."""
        return {"fingerprint": self.fingerprint, "comment": self.comment, "trusted_file": self.trusted_file,
                "manifest_sha256": self.manifest_sha256}


# -- key files ---------------------------------------------------------------------------------

def _public_line(raw: bytes, comment: str) -> str:
    return f"{PUBLIC_PREFIX} {base64.b64encode(raw).decode()}" + (f" {comment}" if comment else "") + "\n"


def _default_comment() -> str:
    try:
        who = f"{getpass.getuser()}@{socket.gethostname()}"
    except (OSError, KeyError):
        who = "lab"
    return f"{who} {time.strftime('%Y-%m-%d')}"


def _clean_comment(comment: str) -> str:
    text = " ".join(str(comment).split())
    if len(text) > MAX_COMMENT or not text.isprintable():
        raise ConfigError(f"expected a printable comment of at most {MAX_COMMENT} characters", file="--comment")
    return text


def _shared_folder(path: Path) -> str | None:
    """Why ``path``'s folder looks shared with others (a bench folder, a git work tree), else None."""
    folder = path.resolve().parent
    for d in (folder, *folder.parents):
        if (d / ".git").exists():
            return f"{d} is a git work tree"
        if d == folder and ((d / "inventory.yaml").exists() or (d / MANIFEST).exists()):
            return f"{d} holds {'inventory.yaml' if (d / 'inventory.yaml').exists() else MANIFEST}"
    return None


def generate_key(out: Path, *, comment: str | None = None) -> tuple[LabKey, Path, str | None]:
    """Write a new Ed25519 private key to ``out`` (OpenSSH format, mode 0600) and its public line
    to ``out.pub``; both created exclusively (ConfigError when either exists). Returns the key,
    the public file and a warning when ``out`` lies in a folder that looks shared (else None)."""
    ed = _crypto()
    from cryptography.hazmat.primitives import serialization as ser

    out = Path(out)
    pub = out.with_name(out.name + ".pub")
    for p in (out, pub):
        if os.path.lexists(p):
            raise ConfigError("exists; expected a new file (a lab key is never overwritten: move the old "
                              "one away first)", file=str(p))
    text = _clean_comment(_default_comment() if comment is None else comment)
    key = ed.Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    secret = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption())
    made: list[Path] = []
    try:
        for path, data, mode in ((out, secret, 0o600), (pub, _public_line(raw, text).encode(), 0o644)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
            made.append(path)
            with os.fdopen(fd, "wb") as fh:
                if hasattr(os, "fchmod"):
                    os.fchmod(fh.fileno(), mode)   # whatever the umask
                fh.write(data)
    except FileExistsError as exc:
        for p in made:
            p.unlink(missing_ok=True)
        raise ConfigError("exists; expected a new file", file=str(exc.filename or out)) from None
    except OSError as exc:
        for p in made:
            p.unlink(missing_ok=True)
        raise ConfigError(f"cannot write the key ({exc.strerror or exc}); expected a writable folder",
                          file=str(exc.filename or out)) from None
    return LabKey(out, raw, key), pub, _shared_folder(out)


def _read_small(path: Path, *, what: str) -> bytes:
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"not a regular file; expected {what}", file=str(path))
        if st.st_size > MAX_KEY_FILE_BYTES:
            raise ConfigError(f"{st.st_size} bytes; expected {what} of at most {MAX_KEY_FILE_BYTES >> 10} KiB",
                              file=str(path))
        with open(path, "rb") as fh:
            return fh.read(MAX_KEY_FILE_BYTES + 1)[:MAX_KEY_FILE_BYTES]
    except OSError as exc:
        raise ConfigError(f"cannot read ({exc.strerror or exc}); expected {what}", file=str(path)) from None


def _is_private(data: bytes) -> bool:
    return b"PRIVATE KEY" in data[:4096]


def load_private_key(path: Path) -> LabKey:
    """The Ed25519 private key in ``path`` (OpenSSH or PKCS#8 PEM, unencrypted), readable by its
    owner only; ConfigError naming the file otherwise (a public key, another key type, a
    passphrase, a file others can read). Never echoes the file's content."""
    ed = _crypto()
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization as ser

    path = Path(path)
    what = "an Ed25519 private key file (testbed keygen --out KEY writes one)"
    data = _read_small(path, what=what)
    if not _is_private(data):
        hint = " (the .pub file is for --require-signed; sign with the private key beside it)" \
            if data.lstrip().startswith(PUBLIC_PREFIX.encode()) or data.lstrip().startswith(b"ssh-") else ""
        raise ConfigError(f"is not a private key; expected {what}{hint}", file=str(path))
    if os.name == "posix":
        mode = path.stat().st_mode
        if mode & 0o077:
            raise ConfigError(f"can be read by others (mode {stat.S_IMODE(mode):04o}); expected a private key "
                              f"only its owner reads: chmod 600 {path}", file=str(path))
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key = ser.load_ssh_private_key(data, password=None)
        else:
            key = ser.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError("is protected by a passphrase; expected an unencrypted key, kept readable by its "
                          "owner only", file=str(path)) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"cannot be read as a private key; expected {what}", file=str(path)) from None
    except Exception as exc:   # the parser's own errors: never its message, which may quote the file
        raise ConfigError(f"cannot be read as a private key ({type(exc).__name__}); expected {what}",
                          file=str(path)) from None
    if not isinstance(key, ed.Ed25519PrivateKey):
        kind = type(key).__name__.lstrip("_").replace("PrivateKey", "")
        raise ConfigError(f"holds a {kind} key; expected an Ed25519 one (testbed keygen)", file=str(path))
    raw = key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return LabKey(path, raw, key)


def _b64(text: Any, *, size: int) -> bytes | None:
    """Strict base64 of exactly ``size`` bytes, else None."""
    if not isinstance(text, str) or len(text) > 4 * (size // 3 + 1) or not text.isascii():
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == size else None


def load_trusted(paths: Sequence[Path]) -> list[TrustedKey]:
    """The public keys in ``paths``: each file one ``hbc-testbed-ed25519`` line or several (an
    authorized-keys style list; blank lines and ``#`` comments skipped). ConfigError naming the
    file and line otherwise: a private key, an unknown key type, a bad key, a file with no key."""
    keys: list[TrustedKey] = []
    if not paths:
        raise ConfigError("no trusted key given; expected at least one public key file (KEY.pub)",
                          file="--require-signed")
    for path in map(Path, paths):
        data = _read_small(path, what=f"public keys, one a line: {_PUBLIC_HINT}")
        if _is_private(data):
            raise ConfigError("is a private key; expected the public key (KEY.pub). The private key stays with "
                              "whoever signs: never hand it out or put it in a shared folder", file=str(path))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"is not UTF-8 text; expected public keys, one a line: {_PUBLIC_HINT}",
                              file=str(path)) from None
        found = 0
        for n, line in enumerate(text.splitlines(), 1):
            fields = line.split(None, 2)
            if not fields or fields[0].startswith("#"):
                continue
            if fields[0] != PUBLIC_PREFIX:
                kind = "an OpenSSH public key" if fields[0].startswith(("ssh-", "ecdsa-", "sk-")) else "a line"
                raise ConfigError(f"{kind} of another kind; expected {_PUBLIC_HINT}", file=str(path), line=n)
            raw = _b64(fields[1], size=32) if len(fields) > 1 else None
            if raw is None:
                raise ConfigError(f"the key is not base64 of 32 bytes; expected {_PUBLIC_HINT}", file=str(path),
                                  line=n)
            comment = fields[2].strip() if len(fields) > 2 else ""
            if len(comment) > MAX_COMMENT or not comment.isprintable():
                comment = comment[:MAX_COMMENT].encode("ascii", "replace").decode()
            keys.append(TrustedKey(raw, comment, path, f"{path}:{n}"))
            found += 1
            if len(keys) > MAX_TRUSTED_KEYS:
                raise ConfigError(f"more than {MAX_TRUSTED_KEYS} trusted keys; expected a lab's few",
                                  file=str(path), line=n)
        if not found:
            raise ConfigError(f"holds no key; expected {_PUBLIC_HINT}", file=str(path))
    return keys


# -- signing and checking ------------------------------------------------------------------------

def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _read_manifest(bundle_dir: Path, error: type[Exception]) -> bytes:
    path = bundle_dir / MANIFEST
    try:
        if path.is_symlink() or not path.is_file():
            raise error(f"{bundle_dir}: not a bundle (no {MANIFEST} as a plain file)")
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise error(f"{path}: {size} bytes; expected a manifest of at most {MAX_MANIFEST_BYTES >> 20} MiB")
        with open(path, "rb") as fh:
            return fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None


def _experiment_copy(bundle_dir: Path, data: bytes, *, source: str) -> tuple[str, str] | None:
    """(file, sha256) of the experiment copy the manifest names, None when it names none;
    SignatureError when it names one without a sha256 (the signature would not cover it)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise SignatureError(f"{source}: not JSON; expected a bundle manifest") from None
    exp = doc.get("experiment") if isinstance(doc, dict) else None
    if not isinstance(exp, dict) or "copy" not in exp:
        return None
    name = exp["copy"]
    bundle_file(bundle_dir, name, key="experiment.copy")
    sha = exp.get("sha256")
    if not isinstance(sha, str) or not _SHA_RE.fullmatch(sha):
        raise SignatureError(f"{source}: experiment.sha256: expected the sha256 of {name} (64 lowercase hex "
                             f"digits), so a signature covers the experiment the bundle carries; rebuild the "
                             f"bundle with this version of testbed partition")
    return name, sha


def sign_bundle(bundle_dir: Path, key: Path | LabKey, *, replace: bool = False) -> Path:
    """Write ``bundle_dir/manifest.sig``: the signature of ``key`` (a private key file or a loaded
    ``LabKey``) over the exact bytes of ``manifest.json``. Refuses a key file inside the bundle, a
    manifest whose experiment copy has no sha256, an existing manifest.sig unless ``replace``.
    Call it on the staging folder before testbed.outdir commits it, so the marker lists the file."""
    bundle_dir = Path(bundle_dir)
    lab = key if isinstance(key, LabKey) else load_private_key(Path(key))
    if _inside(lab.path, bundle_dir):
        raise ConfigError(f"is inside the bundle {bundle_dir}; expected a private key kept outside every "
                          f"folder that is passed on", file=str(lab.path))
    data = _read_manifest(bundle_dir, BundleError)
    source = str(bundle_dir / MANIFEST)
    copy = _experiment_copy(bundle_dir, data, source=source)
    if copy is not None:
        f = bundle_dir / copy[0]
        if f.is_file() and sha256_file(f) != copy[1]:
            raise SignatureError(f"{f}: sha256 differs from the manifest's experiment.sha256; expected the file "
                                 f"the bundle was built with (nothing was signed)")
    out = bundle_dir / SIGNATURE
    if os.path.lexists(out) and not replace:
        raise BundleError(f"{out}: exists; expected an unsigned bundle (sign a freshly built one)")
    doc = {"format": SIG_FORMAT, "algorithm": ALGORITHM, "public_key": base64.b64encode(lab.public_raw).decode(),
           "fingerprint": lab.fingerprint, "signature": base64.b64encode(lab.sign(data)).decode()}
    fd, tmp = tempfile.mkstemp(prefix=".manifest.sig.", dir=bundle_dir)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=1)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _signature_doc(bundle_dir: Path) -> dict[str, Any]:
    path = bundle_dir / SIGNATURE
    where = str(path)
    try:
        if not os.path.lexists(path):
            raise SignatureError(f"{bundle_dir}: unsigned bundle (no {SIGNATURE}); expected one signed by a trusted "
                                 f"key (testbed partition --sign KEY)")
        bundle_file(bundle_dir, SIGNATURE, key=SIGNATURE)       # a plain file of the bundle, no link out
        if not path.is_file():
            raise SignatureError(f"{where}: not a regular file; expected a bundle signature")
        size = path.stat().st_size
        if size > MAX_SIG_BYTES:
            raise SignatureError(f"{where}: {size} bytes; expected a signature of at most {MAX_SIG_BYTES >> 10} KiB")
        with open(path, "rb") as fh:
            doc = json.loads(fh.read(MAX_SIG_BYTES + 1))
    except OSError as exc:
        raise SignatureError(f"{where}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, RecursionError):
        raise SignatureError(f"{where}: not JSON; expected the object testbed partition --sign writes") from None
    if not isinstance(doc, dict):
        raise SignatureError(f"{where}: expected a JSON object (format, algorithm, public_key, fingerprint, "
                             f"signature); got {type(doc).__name__}")
    fmt = doc.get("format")
    if isinstance(fmt, bool) or fmt != SIG_FORMAT:
        raise SignatureError(f"{where}: format: expected {SIG_FORMAT} (this harness's signature format)")
    if doc.get("algorithm") != ALGORITHM:
        raise SignatureError(f"{where}: algorithm: expected {ALGORITHM!r}")
    raw = _b64(doc.get("public_key"), size=32)
    if raw is None:
        raise SignatureError(f"{where}: public_key: expected base64 of a 32-byte Ed25519 key")
    sig = _b64(doc.get("signature"), size=64)
    if sig is None:
        raise SignatureError(f"{where}: signature: expected base64 of a 64-byte Ed25519 signature")
    if doc.get("fingerprint") != fingerprint(raw):
        raise SignatureError(f"{where}: fingerprint: expected {fingerprint(raw)}, the fingerprint of its "
                             f"public_key")
    return {"public_raw": raw, "signature": sig}


def verify_bundle(bundle_dir: Path, *, trusted: Sequence[Path]) -> Signer:
    """Check ``bundle_dir/manifest.sig`` against the public keys in ``trusted`` (files: see
    ``load_trusted``) and the experiment copy against the manifest's sha256; the ``Signer`` when
    it holds, else one line (SignatureError / BundleError / ConfigError, exit 2) naming the bundle
    and what was expected. Call it before anything of the bundle is read or copied; the shard files
    are checked by ``load_manifest`` against the manifest this verified."""
    bundle_dir = Path(bundle_dir)
    keys = load_trusted(trusted)
    for src in dict.fromkeys(k.path for k in keys):
        if _inside(src, bundle_dir):
            raise ConfigError(f"is inside the bundle {bundle_dir}; expected the lab's public key from outside "
                              f"the bundle (a key shipped with a bundle proves nothing)", file=str(src))
    data = _read_manifest(bundle_dir, SignatureError)
    got = _signature_doc(bundle_dir)
    fp = fingerprint(got["public_raw"])
    match = next((k for k in keys if k.public_raw == got["public_raw"]), None)
    if match is None:
        wanted = ", ".join(k.describe() for k in keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
        raise SignatureError(f"{bundle_dir}: signed by an untrusted key {fp}; expected a signature by {wanted}")
    ed = _crypto()
    from cryptography.exceptions import InvalidSignature
    try:
        ed.Ed25519PublicKey.from_public_bytes(match.public_raw).verify(got["signature"], data)
    except InvalidSignature:
        raise SignatureError(f"{bundle_dir}: bad signature: {MANIFEST} was changed after {match.describe()} "
                             f"signed it; expected the manifest as signed (rebuild and sign the bundle again)"
                             ) from None
    except ValueError:
        raise SignatureError(f"{bundle_dir / SIGNATURE}: public_key: not a valid Ed25519 key") from None
    copy = _experiment_copy(bundle_dir, data, source=str(bundle_dir / MANIFEST))
    if copy is not None:
        f = bundle_dir / copy[0]
        if f.is_file():
            try:
                digest = sha256_file(f)
            except OSError as exc:
                raise SignatureError(f"{f}: cannot read ({exc.strerror or exc})") from None
            if digest != copy[1]:
                raise SignatureError(f"{f}: sha256 {digest[:12]}… does not match the signed manifest's "
                                     f"{copy[1][:12]}…; the bundle was modified after it was signed")
    return Signer(bundle_dir=bundle_dir, fingerprint=fp, comment=match.comment, trusted_file=match.source,
                  manifest_sha256=hashlib.sha256(data).hexdigest())
