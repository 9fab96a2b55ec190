"""The authenticated broker (#13): per-run users, an ACL per board, anonymous only by name.

Against a real mosquitto on loopback: an anonymous client and a wrong password are refused; a
board's credentials cannot publish another board's telemetry, a wearable cannot publish the
edge's results (MQTT v5 PUBACK 'not authorized', 0x87, and a subscriber with the orchestrator's
rights never sees them); the inventory refuses an inline password with the fix; and, as runs of
the demo bench (slow): outside clients refused while the run completes unaffected, no password
anywhere in the run directory or the output, and ``anonymous: true`` said on the dashboard and in
the summary.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from conftest import DEMO_INVENTORY, ROOT, last_json
from nodes.agentconfig import Broker, from_dict
from nodes.errors import TransportError
from nodes.mqtt import Login, MqttClient, topic
from testbed.broker import (ORCHESTRATOR_USER, BrokerAuth, EmbeddedBroker, board_user, mosquitto_acl,
                            mosquitto_password_line)
from testbed.config import load_inventory
from testbed.errors import BrokerError, ConfigError

HAVE_MOSQUITTO = bool(shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists())
needs_mosquitto = pytest.mark.skipif(not HAVE_MOSQUITTO, reason="mosquitto not installed (apt-get install mosquitto)")
NOT_AUTHORIZED = 0x87
BENCH = "t"
LINKS = [("wrist-edge", "wrist", "edge"), ("chest-edge", "chest", "edge")]


def _auth() -> BrokerAuth:
    return BrokerAuth.for_bench(bench=BENCH, boards=["wrist", "chest", "edge"], links=LINKS)


# ------------------------------------------------------------------------------ an MQTT v5 probe


class V5:
    """A raw paho MQTT v5 client: CONNACK, PUBACK and SUBACK reason codes as the broker sent them."""

    def __init__(self, host: str, port: int, *, username: str | None = None, password: str | None = None) -> None:
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"probe-{os.getpid()}-{id(self)}",
                             protocol=paho.MQTTv5)
        if username is not None:
            self.c.username_pw_set(username, password)
        self.connack: int | None = None
        self.pubacks: dict[int, int] = {}
        self.subacks: dict[int, list[int]] = {}
        self.got: list[tuple[str, bytes]] = []
        self._ev = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: (setattr(self, "connack", rc.value), self._ev.set())
        self.c.on_publish = lambda c, u, mid, rc, p: (self.pubacks.__setitem__(mid, rc.value), self._ev.set())
        self.c.on_subscribe = lambda c, u, mid, rcs, p: (self.subacks.__setitem__(mid, [r.value for r in rcs]),
                                                          self._ev.set())
        self.c.on_message = lambda c, u, m: self.got.append((m.topic, m.payload))
        self.c.connect(host, port, keepalive=10)
        self.c.loop_start()
        self._wait(lambda: self.connack is not None)

    def _wait(self, cond, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond() and time.monotonic() < deadline:
            self._ev.wait(0.05)
            self._ev.clear()
        assert cond(), "no answer from the broker"

    def publish(self, name: str, payload: bytes) -> int:
        info = self.c.publish(name, payload, qos=1)
        self._wait(lambda: info.mid in self.pubacks)
        return self.pubacks[info.mid]

    def subscribe(self, flt: str) -> int:
        _, mid = self.c.subscribe(flt, qos=1)
        self._wait(lambda: mid in self.subacks)
        return self.subacks[mid][0]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


# ------------------------------------------------------------------------------ files and config


def test_password_line_is_mosquittos_pbkdf2_sha512_format() -> None:
    line = mosquitto_password_line("board-wrist", "s3cret", salt=bytes(range(12)))
    user, rest = line.split(":", 1)
    assert user == "board-wrist" and rest.startswith("$7$101$AAECAwQFBgcICQoL$")
    assert "s3cret" not in line


def test_acl_lets_each_board_publish_only_its_own_topics() -> None:
    acl = mosquitto_acl(_auth())
    wrist = acl.split("user board-wrist\n")[1].split("\n\n")[0].splitlines()
    assert wrist == ["topic write tb/t/status/wrist", "topic write tb/t/tele/wrist", "topic write tb/t/time/wrist",
                     "topic write tb/t/data/wrist-edge", "topic read tb/t/ctl/wrist"]
    edge = acl.split("user board-edge\n")[1].split("\n\n")[0].splitlines()
    assert "topic read tb/t/data/wrist-edge" in edge and "topic write tb/t/tele/edge" in edge
    assert f"user {ORCHESTRATOR_USER}\ntopic write tb/t/ctl/+\ntopic read tb/t/#" in acl


def test_passwords_are_fresh_per_run_and_never_in_a_repr() -> None:
    a, b = _auth(), _auth()
    assert a.password("board-wrist") != b.password("board-wrist")
    assert a.password("board-wrist") not in repr(a)
    assert "hunter2" not in repr(Login(username="u", password="hunter2"))


@needs_mosquitto
def test_broker_folder_holds_hashes_only_and_private_files(tmp_path: Path) -> None:
    auth = _auth()
    with EmbeddedBroker(workdir=tmp_path, auth=auth) as broker:
        conf = (tmp_path / "mosquitto.conf").read_text()
        assert "allow_anonymous false" in conf and "password_file" in conf and "acl_file" in conf
        assert broker.port and not broker.anonymous
    for name in ("passwd", "acl"):
        assert (tmp_path / name).stat().st_mode & 0o077 == 0
    blob = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    for g in auth.grants:
        assert g.password.encode() not in blob


def test_amqtt_fallback_is_refused_when_auth_is_on(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="needs mosquitto.*cannot enforce the same ACL.*anonymous: true"):
        EmbeddedBroker(workdir=tmp_path, prefer="amqtt", auth=_auth()).start()


# ------------------------------------------------------------------------------ refusals on a live broker


@needs_mosquitto
def test_anonymous_and_wrong_password_are_refused(tmp_path: Path) -> None:
    auth = _auth()
    with EmbeddedBroker(workdir=tmp_path, auth=auth) as broker:
        with pytest.raises(TransportError, match="refused 'anon'"):
            MqttClient(host=broker.host, port=broker.port, client_id="anon").connect(timeout=5)
        with pytest.raises(TransportError, match="refused 'liar'"):
            MqttClient(host=broker.host, port=broker.port, client_id="liar",
                       login=Login(username="board-wrist", password="not-the-password")).connect(timeout=5)
        ok = MqttClient(host=broker.host, port=broker.port, client_id="wrist",
                        login=Login(username="board-wrist", password=auth.password("board-wrist"))).connect(timeout=5)
        ok.close()
        for user, pw in ((None, None), ("board-wrist", "wrong")):
            probe = V5(broker.host, broker.port, username=user, password=pw)
            assert probe.connack in (0x86, 0x87), probe.connack   # bad user name or password / not authorized
            probe.close()


@needs_mosquitto
def test_a_board_cannot_publish_another_boards_topics_nor_a_wearable_a_result(tmp_path: Path) -> None:
    auth = _auth()
    with EmbeddedBroker(workdir=tmp_path, auth=auth) as broker:
        orch = V5(broker.host, broker.port, username=ORCHESTRATOR_USER, password=auth.password(ORCHESTRATOR_USER))
        assert orch.connack == 0 and orch.subscribe(f"tb/{BENCH}/#") == 1
        wrist = V5(broker.host, broker.port, username=board_user("wrist"), password=auth.password("board-wrist"))
        edge = V5(broker.host, broker.port, username=board_user("edge"), password=auth.password("board-edge"))
        fake_result = json.dumps({"kind": "result", "board": "edge", "sample": 0, "pred": 3}).encode()
        assert wrist.publish(topic(BENCH, "tele", "chest"), b'{"kind": "forged"}') == NOT_AUTHORIZED
        assert wrist.publish(topic(BENCH, "tele", "edge"), fake_result) == NOT_AUTHORIZED
        assert wrist.publish(topic(BENCH, "status", "chest"), b"offline") == NOT_AUTHORIZED
        assert wrist.publish(topic(BENCH, "data", "chest-edge"), b"frame") == NOT_AUTHORIZED
        assert wrist.publish(topic(BENCH, "ctl", "edge"), b'{"cmd": "stop"}') == NOT_AUTHORIZED
        # mosquitto grants a SUBSCRIBE and checks the read ACL at delivery: nothing of another's arrives
        for flt in (topic(BENCH, "ctl", "+"), topic(BENCH, "data", "wrist-edge")):   # data: only the edge reads it
            wrist.subscribe(flt)
        assert orch.publish(topic(BENCH, "ctl", "chest"), b'{"cmd": "stop"}') == 0
        assert orch.publish(topic(BENCH, "ctl", "wrist"), b'{"cmd": "ping"}') == 0
        # what each may do still goes through, and arrives
        assert wrist.publish(topic(BENCH, "tele", "wrist"), b"mine") == 0
        assert wrist.publish(topic(BENCH, "data", "wrist-edge"), b"frame") == 0
        assert edge.publish(topic(BENCH, "tele", "edge"), b"real result") == 0
        deadline = time.monotonic() + 5
        while len(orch.got) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)   # a refused message would have arrived by now too
        mine = [(topic(BENCH, "tele", "wrist"), b"mine"), (topic(BENCH, "data", "wrist-edge"), b"frame"),
                (topic(BENCH, "tele", "edge"), b"real result")]
        assert sorted(m for m in orch.got if "/ctl/" not in m[0]) == sorted(mine)
        assert wrist.got == [(topic(BENCH, "ctl", "wrist"), b'{"cmd": "ping"}')]
        for c in (orch, wrist, edge):
            c.close()


# ------------------------------------------------------------------------------ inventory and agent.json


def _inventory(tmp_path: Path, broker: str) -> Path:
    text = DEMO_INVENTORY.read_text()
    start = text.index("broker:")
    end = text.index("boards:")
    path = tmp_path / "inventory.yaml"
    path.write_text(text[:start] + broker + "\n" + text[end:])
    return path


def test_an_inline_password_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = _inventory(tmp_path, "broker:\n  mode: external\n  host: 10.0.0.1\n  username: lab\n"
                                "  password: hunter2\n")
    with pytest.raises(ConfigError) as err:
        load_inventory(path)
    msg = str(err.value)
    line = path.read_text().splitlines().index("  password: hunter2") + 1
    assert msg.startswith(f"{path}:{line}: broker.password: ") and "password_file:" in msg and "\n" not in msg
    assert "hunter2" not in msg


@pytest.mark.parametrize(("broker", "where", "needle"), [
    ("broker:\n  mode: embedded\n  username: lab\n", "broker.username", "makes its own users"),
    ("broker:\n  mode: external\n  host: h\n", "broker", "needs a login"),
    ("broker:\n  mode: external\n  host: h\n  username: lab\n", "broker.password_file", "required key missing"),
    ("broker:\n  mode: external\n  host: h\n  username: lab\n  password_file: nope.pass\n",
     "broker.password_file", "does not exist"),
    ("broker:\n  mode: external\n  host: h\n  username: lab\n  password_file: empty.pass\n",
     "broker.password_file", "it is empty"),
    ("broker:\n  mode: external\n  host: h\n  anonymous: true\n  tls: {key_file: lab.pass}\n",
     "broker.tls.key_file", "needs its certificate"),
    ("broker:\n  mode: external\n  host: h\n  anonymous: true\n  username: lab\n", "broker.username", "anonymous"),
    ("broker:\n  anonymous: yes-please\n", "broker.anonymous", "true or false"),
])
def test_broker_section_errors_name_file_line_key(tmp_path: Path, broker: str, where: str, needle: str) -> None:
    (tmp_path / "lab.pass").write_text("s3cret\n")
    (tmp_path / "empty.pass").write_text("")
    path = _inventory(tmp_path, broker)
    with pytest.raises(ConfigError) as err:
        load_inventory(path)
    assert err.value.key == where and err.value.line is not None and needle in str(err.value), str(err.value)


def test_external_login_and_tls_files_load(tmp_path: Path) -> None:
    for name in ("lab.pass", "ca.crt", "client.crt", "client.key"):
        (tmp_path / name).write_text("x\n")
    inv = load_inventory(_inventory(tmp_path, "broker:\n  mode: external\n  host: h\n  username: lab\n"
                                              "  password_file: lab.pass\n  tls: {ca_file: ca.crt, "
                                              "cert_file: client.crt, key_file: client.key}\n"))
    b = inv.broker
    assert (b.username, b.password_file, b.ca_file, b.key_file) == \
        ("lab", tmp_path / "lab.pass", tmp_path / "ca.crt", tmp_path / "client.key")
    assert b.tls and not b.anonymous
    anon = load_inventory(_inventory(tmp_path, "broker:\n  mode: embedded\n  anonymous: true\n")).broker
    assert anon.anonymous and anon.mode == "embedded"
    assert not load_inventory(DEMO_INVENTORY).broker.anonymous


def test_agent_json_carries_a_password_file_never_a_password(tmp_path: Path) -> None:
    from nodes.agent import broker_login
    from nodes.errors import AgentConfigError
    from test_agentconfig import wearable

    (tmp_path / "wrist.password").write_text("s3cret\n")
    cfg = wearable(broker=Broker(host="127.0.0.1", port=1883, username="board-wrist",
                                 password_file="wrist.password", ca_file="/etc/ca.crt"))
    data = cfg.to_dict()
    assert data["broker"] == {"host": "127.0.0.1", "port": 1883, "username": "board-wrist",
                              "password_file": "wrist.password",
                              "tls": {"ca_file": "/etc/ca.crt", "cert_file": None, "key_file": None}}
    back = from_dict(json.loads(json.dumps(data)), folder=tmp_path)
    assert back.broker == cfg.broker
    login = broker_login(back)
    assert (login.username, login.password, login.ca_file) == ("board-wrist", "s3cret", "/etc/ca.crt")
    assert login.settings()["password"] == "s3cret" and "s3cret" not in repr(login)
    with pytest.raises(AgentConfigError, match="broker.password_file: .*cannot read"):
        broker_login(from_dict({**data, "broker": {**data["broker"], "password_file": "gone"}}, folder=tmp_path))
    with pytest.raises(AgentConfigError, match="broker.username: expected the user name"):
        from_dict({**data, "broker": {**data["broker"], "username": None}})
    anonymous = from_dict({**data, "broker": {"host": "h", "port": 1}})
    assert broker_login(anonymous) == Login()


def test_dashboard_header_says_anonymous() -> None:
    from rich.console import Console

    from testbed.dashboard import _header
    from testbed.runstate import RunState

    def header(auth: str) -> str:
        st = RunState()
        st.apply({"type": "run_start", "t": 0.0, "run": "r1", "samples": 1, "rate_hz": 1.0,
                  "broker": {"kind": "mosquitto", "port": 1, "fallback_reason": None, "auth": auth}})
        con = Console(width=160, record=True)
        con.print(_header(st))
        return con.export_text()
    assert "broker=mosquitto (anonymous)" in header("anonymous")
    assert "anonymous" not in header("per-run users and ACL")


# ------------------------------------------------------------------------------ runs of the demo bench


def _cli(*args: str, cache: Path, cwd: Path) -> subprocess.Popen[str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "HBC_TESTBED_CACHE": str(cache), "PYTHONPATH": path}
    return subprocess.Popen([sys.executable, "-m", "testbed", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(cond, proc: subprocess.Popen[str], *, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        assert proc.poll() is None, f"the run ended early: {proc.communicate()[1][-2000:]}"
        time.sleep(0.1)
    raise AssertionError("timed out waiting for the run")


@pytest.mark.slow
@needs_mosquitto
def test_a_demo_run_refuses_outside_clients_and_forged_topics(tmp_path: Path, model_cache: Path) -> None:
    from conftest import digits_experiment

    n = 60
    exp = digits_experiment(tmp_path / "exp.yaml", samples=n, rate_hz=10.0, output=tmp_path / "runs")
    proc = _cli("run", str(exp), "--inventory", str(DEMO_INVENTORY), "--headless", "--json",
                cache=model_cache, cwd=tmp_path)
    try:
        def sampling() -> Path | None:
            for ev in (tmp_path / "runs").glob("*/events.jsonl"):
                if '"sampling_start"' in ev.read_text():
                    return ev.parent
            return None
        run_dir = _wait_for(sampling, proc)
        port = json.loads((run_dir / "run.json").read_text())["broker"]["port"]
        wrist_cfg = json.loads((run_dir / "boards" / "wrist" / "agent.json").read_text())["broker"]
        assert wrist_cfg["username"] == "board-wrist" and "password" not in wrist_cfg
        secret_file = Path(wrist_cfg["password_file"])
        assert run_dir not in secret_file.parents and secret_file.stat().st_mode & 0o077 == 0
        password = secret_file.read_text().strip()
        # an outside client: anonymous, or with a wrong password, is refused at CONNECT
        with pytest.raises(TransportError, match="refused"):
            MqttClient(host="127.0.0.1", port=port, client_id="outsider").connect(timeout=5)
        with pytest.raises(TransportError, match="refused"):
            MqttClient(host="127.0.0.1", port=port, client_id="guesser",
                       login=Login(username="board-wrist", password=password + "x")).connect(timeout=5)
        # a board's own credentials cannot speak for another board, nor send the edge's results
        forged = V5("127.0.0.1", port, username="board-wrist", password=password)
        assert forged.connack == 0
        assert forged.publish(topic("demo", "tele", "chest"),
                              json.dumps({"kind": "sample", "board": "chest", "forged": "FORGED-1"}).encode()) \
            == NOT_AUTHORIZED
        assert forged.publish(topic("demo", "tele", "edge"),
                              json.dumps({"kind": "result", "sample": 0, "pred": 0, "forged": "FORGED-2"}).encode()) \
            == NOT_AUTHORIZED
        assert forged.publish(topic("demo", "data", "chest-edge"), b"FORGED-3") == NOT_AUTHORIZED
        forged.close()
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    s = last_json(out)
    assert s["samples"] == n and s["completed"] == n and s["timed_out"] == 0   # the run went on unaffected
    assert s["broker_auth"] == "per-run users and ACL"
    assert not secret_file.exists(), "the local boards' password files are removed with the run"
    # no secret anywhere: not in the run directory (run.json, events, logs, agent.json, broker/), not in the output
    blob = b"".join(p.read_bytes() for p in run_dir.rglob("*") if p.is_file())
    assert password.encode() not in blob and password not in out and password not in err
    assert b"FORGED" not in blob
    assert b"$7$" in (run_dir / "broker" / "passwd").read_bytes()


@pytest.mark.slow
@needs_mosquitto
def test_an_anonymous_broker_runs_only_by_name_and_says_so(tmp_path: Path, model_cache: Path) -> None:
    from conftest import digits_experiment, run_cli

    inv = _inventory(tmp_path, "broker:\n  mode: embedded\n  anonymous: true\n")
    exp = digits_experiment(tmp_path / "exp.yaml", samples=8, output=tmp_path / "runs")
    proc = run_cli("run", str(exp), "--inventory", str(inv), "--headless", "--json", cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = last_json(proc.stdout)
    assert s["completed"] == 8 and s["broker_auth"] == "anonymous"
    run_dir = Path(s["run_dir"])
    assert json.loads((run_dir / "run.json").read_text())["broker"]["auth"] == "anonymous"
    assert "allow_anonymous true" in (run_dir / "broker" / "mosquitto.conf").read_text()
    assert json.loads((run_dir / "boards" / "wrist" / "agent.json").read_text())["broker"]["username"] is None
    replay = run_cli("monitor", "--replay", str(run_dir), "--json", cache=model_cache, cwd=tmp_path)
    assert replay.returncode == 0, replay.stderr
    assert "(anonymous)" in replay.stdout and last_json(replay.stdout)["broker_auth"] == "anonymous"


@needs_mosquitto
@pytest.mark.parametrize(("login", "ok", "needle"), [
    ("  username: lab\n  password_file: lab.pass\n", True, "logged in to 127.0.0.1:{port} as lab"),
    ("  username: lab\n  password_file: wrong.pass\n", False, "refused"),
    ("  anonymous: true\n", False, "refused"),
])
def test_doctor_logs_in_to_an_external_broker(tmp_path: Path, login: str, ok: bool, needle: str) -> None:
    from testbed.broker import Grant, free_port
    from testbed.remote.doctor import broker_login_check

    (tmp_path / "lab.pass").write_text("lab-secret\n")
    (tmp_path / "wrong.pass").write_text("guess\n")
    port = free_port()
    lab = BrokerAuth(grants=(Grant("lab", "lab-secret", publish=("tb/#",), read=("tb/#",)),))
    inv = load_inventory(_inventory(tmp_path, f"broker:\n  mode: external\n  host: 127.0.0.1\n  port: {port}\n"
                                              + login))
    with EmbeddedBroker(workdir=tmp_path / "lab", port=port, auth=lab):
        report = broker_login_check(inv)
    assert report is not None and report.ok is ok
    check = report.checks[0]
    assert check.name == "broker login" and needle.format(port=port) in check.detail, check
    assert "lab-secret" not in check.detail and (ok or check.fix)
    assert broker_login_check(load_inventory(DEMO_INVENTORY)) is None   # embedded: users made per run


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@needs_mosquitto
@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl not installed (apt-get install openssl)")
def test_tls_login_checks_the_brokers_certificate(tmp_path: Path) -> None:
    """MqttClient over TLS: the broker's certificate checked against ca_file, then the password."""
    from testbed.broker import Grant, free_port, mosquitto_acl, mosquitto_password_file

    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={ca}",
                 "-keyout", f"{ca}.key", "-out", f"{ca}.crt", cwd=tmp_path)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
             "-out", "server.csr", cwd=tmp_path)
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", "server.crt", cwd=tmp_path)
    lab = BrokerAuth(grants=(Grant("lab", "lab-secret", publish=("tb/#",), read=("tb/#",)),))
    (tmp_path / "passwd").write_text(mosquitto_password_file(lab))
    (tmp_path / "acl").write_text(mosquitto_acl(lab))
    port = free_port()
    (tmp_path / "m.conf").write_text(
        f"listener {port} 127.0.0.1\ncafile {tmp_path}/ca.crt\ncertfile {tmp_path}/server.crt\n"
        f"keyfile {tmp_path}/server.key\nallow_anonymous false\npassword_file {tmp_path}/passwd\n"
        f"acl_file {tmp_path}/acl\npersistence false\n" + ("user root\n" if os.geteuid() == 0 else ""))
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([exe, "-c", str(tmp_path / "m.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from testbed.broker import wait_listening
        wait_listening("127.0.0.1", port, timeout=15, proc=proc)
        good = Login(username="lab", password="lab-secret", ca_file=str(tmp_path / "ca.crt"))
        MqttClient(host="127.0.0.1", port=port, client_id="tls-ok", login=good).connect(timeout=5).close()
        with pytest.raises(TransportError, match="TLS with MQTT broker"):
            MqttClient(host="127.0.0.1", port=port, client_id="tls-bad-ca",
                       login=Login(username="lab", password="lab-secret",
                                   ca_file=str(tmp_path / "other-ca.crt"))).connect(timeout=5)
        with pytest.raises(TransportError, match="refused"):
            MqttClient(host="127.0.0.1", port=port, client_id="tls-bad-pw",
                       login=Login(username="lab", password="nope", ca_file=str(tmp_path / "ca.crt"))).connect(timeout=5)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
