"""``testbed inventory check`` says how the broker is logged into (#13), never a secret.

Through ``testbed.cli.main``: the demo bench's per-run users and ACL, anonymous only by name,
and an external broker's user, password file, client certificate and CA shown by path while the
files' content (the password above all) never reaches the output. The wording is the run
summary's ``broker_auth`` (``testbed.broker.auth_kind``), checked against what the orchestrator
records for a run.
"""
from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import DEMO_INVENTORY
from testbed.broker import auth_kind
from testbed.cli import main
from testbed.config import load_inventory

SECRET = "lab-s3cret-do-not-print"
KEY_BODY = "-----BEGIN PRIVATE KEY----- not-for-eyes"


def _inventory(tmp_path: Path, broker: str) -> Path:
    """The demo bench with its broker section replaced by ``broker``, written into ``tmp_path``."""
    text = DEMO_INVENTORY.read_text()
    path = tmp_path / "inventory.yaml"
    path.write_text(text[:text.index("broker:")] + broker + "\n" + text[text.index("boards:"):])
    return path


def _files(tmp_path: Path) -> None:
    (tmp_path / "lab.pass").write_text(SECRET + "\n")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE----- ca\n")
    (tmp_path / "client.crt").write_text("-----BEGIN CERTIFICATE----- client\n")
    (tmp_path / "client.key").write_text(KEY_BODY + "\n")


def _check(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["inventory", "check", str(path)]) == 0
    out, err = capsys.readouterr()
    return out + err


def _row(out: str, what: str) -> str:
    """The value of the broker table's row ``what`` (one line of the rendered table)."""
    found = re.search(rf"^│ {re.escape(what)}\s+│ (.*?)\s*│$", out, flags=re.MULTILINE)
    assert found, f"no {what!r} row in:\n{out}"
    return found.group(1)


def test_embedded_broker_says_per_run_users(capsys: pytest.CaptureFixture[str]) -> None:
    out = _check(DEMO_INVENTORY, capsys)
    assert _row(out, "login") == "per-run users and ACL"
    assert "password file" not in out


def test_anonymous_is_said_to_be_asked_for_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _check(_inventory(tmp_path, "broker:\n  mode: embedded\n  anonymous: true\n"), capsys)
    assert _row(out, "login") == "anonymous (asked for by name)"
    _files(tmp_path)
    out = _check(_inventory(tmp_path, "broker:\n  mode: external\n  host: 10.0.0.5\n  anonymous: true\n"
                                      "  tls: {ca_file: ca.crt}\n"), capsys)
    assert _row(out, "login") == "anonymous (asked for by name)"
    assert _row(out, "TLS") == f"on, CA {tmp_path / 'ca.crt'}"


def test_external_login_shows_user_and_file_paths_never_the_password(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _files(tmp_path)
    out = _check(_inventory(tmp_path, "broker:\n  mode: external\n  host: 10.0.0.5\n  username: lab\n"
                                      "  password_file: lab.pass\n  tls: {ca_file: ca.crt, cert_file: client.crt, "
                                      "key_file: client.key}\n"), capsys)
    assert _row(out, "login") == "password and client certificate, as user lab"
    assert _row(out, "password file") == str(tmp_path / "lab.pass")
    assert _row(out, "client certificate") == f"{tmp_path / 'client.crt'} (key {tmp_path / 'client.key'})"
    assert _row(out, "TLS") == f"on, CA {tmp_path / 'ca.crt'}"
    assert SECRET not in out and "not-for-eyes" not in out


def test_external_login_without_tls_says_the_password_is_in_clear(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _files(tmp_path)
    out = _check(_inventory(tmp_path, "broker:\n  mode: external\n  host: 10.0.0.5\n  username: lab\n"
                                      "  password_file: lab.pass\n"), capsys)
    assert _row(out, "login") == "password, as user lab"
    assert _row(out, "TLS") == "off: the password crosses the network in clear"
    assert SECRET not in out
    out = _check(_inventory(tmp_path, "broker:\n  mode: external\n  host: 10.0.0.5\n"
                                      "  tls: {cert_file: client.crt, key_file: client.key}\n"), capsys)
    assert _row(out, "login") == "client certificate"
    assert _row(out, "TLS") == "on, the system's CAs"
    assert "password file" not in out and "not-for-eyes" not in out


def test_the_wording_is_the_run_summarys(tmp_path: Path) -> None:
    """``auth_kind`` says what a run records as its broker's ``auth`` (run.json, events, summary)."""
    from testbed.orchestrator import Orchestrator

    _files(tmp_path)
    for broker in ("broker:\n  mode: embedded\n", "broker:\n  mode: embedded\n  anonymous: true\n",
                   "broker:\n  mode: external\n  host: h\n  username: lab\n  password_file: lab.pass\n",
                   "broker:\n  mode: external\n  host: h\n  tls: {cert_file: client.crt}\n",
                   "broker:\n  mode: external\n  host: h\n  username: lab\n  password_file: lab.pass\n"
                   "  tls: {cert_file: client.crt}\n",
                   "broker:\n  mode: external\n  host: h\n  anonymous: true\n"):
        spec = load_inventory(_inventory(tmp_path, broker)).broker
        recorded = Orchestrator._auth_record(SimpleNamespace(inventory=SimpleNamespace(broker=spec)))  # type: ignore[arg-type]
        assert recorded["auth"] == auth_kind(spec), broker
