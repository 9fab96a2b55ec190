"""The bench's pinned SSH host keys: a project-local known_hosts file in OpenSSH's format.

Holds ``KnownHosts`` (read, look up, pin and re-pin a board's key; the file is rewritten
atomically, one line per board with the board's name as the comment, so `ssh -o
UserKnownHostsFile=known_hosts` reads it too) and ``fingerprint`` (``SHA256:...`` as
``ssh-keygen -l`` prints it). The file is the user's: a line it cannot parse is kept as it is
and reported, never dropped.

It must not connect anywhere; ``testbed.remote.ssh`` decides what an offered key means.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from testbed.errors import ConfigError

__all__ = ["KnownHosts", "HostEntry", "fingerprint", "host_pattern"]


def fingerprint(key: asyncssh.SSHKey) -> str:
    """``SHA256:<base64>`` of a public key, as ``ssh-keygen -lf`` prints it."""
    return key.get_fingerprint("sha256")


def host_pattern(host: str, port: int) -> str:
    """OpenSSH's host field: ``host`` on port 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"


@dataclass(frozen=True)
class HostEntry:
    pattern: str
    key: asyncssh.SSHKey
    comment: str = ""


class KnownHosts:
    """``KnownHosts(path)``: the pins of one bench (a missing file has none)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.entries: list[HostEntry] = []
        self.unparsed: list[tuple[int, str]] = []   # (line number, text) kept verbatim
        self._raw: list[str] = []
        if self.path.exists():
            self._read()

    def _read(self) -> None:
        try:
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the bench's known_hosts: {exc}", file=str(self.path)) from None
        for no, line in enumerate(text.splitlines(), 1):
            self._raw.append(line)
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            parts = stripped.split(None, 3)
            if len(parts) < 3:
                self.unparsed.append((no, line))
                continue
            try:
                key = asyncssh.import_public_key(f"{parts[1]} {parts[2]}")
            except (asyncssh.KeyImportError, ValueError):
                self.unparsed.append((no, line))
                continue
            self.entries.append(HostEntry(parts[0], key, parts[3] if len(parts) > 3 else ""))

    def keys_for(self, host: str, port: int) -> list[asyncssh.SSHKey]:
        """The keys pinned for ``host:port`` (a comma-separated host field matches any of its names)."""
        want = host_pattern(host, port)
        return [e.key for e in self.entries if want in e.pattern.split(",")]

    def pin(self, host: str, port: int, key: asyncssh.SSHKey, *, comment: str) -> None:
        """Pin ``key`` for ``host:port``, replacing any key pinned for it; the file is replaced
        atomically (a crash leaves the old file or the new one, never half of one)."""
        want = host_pattern(host, port)
        kept = []
        for line in self._raw:
            fields = line.strip().split(None, 1)
            if fields and not fields[0].startswith("#") and want in fields[0].split(","):
                continue
            kept.append(line)
        kept.append(f"{want} {key.export_public_key('openssh').decode().strip()} {comment}".rstrip())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".known_hosts.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write("\n".join(kept) + "\n")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.entries = [e for e in self.entries if want not in e.pattern.split(",")]
        self.entries.append(HostEntry(want, key, comment))
        self._raw = kept
