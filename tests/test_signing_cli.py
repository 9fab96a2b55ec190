"""Signed bundles through the real CLI (#13): `testbed keygen`, `testbed partition --sign`, and
`--require-signed` on `run`, `demo` and `deploy`.

The tiny digits partition of tests/test_partition_cli.py is built and signed once per module; each
refusal runs on a copy. A refusal exits 2 with one line, before anything of the bundle is read,
and writes nothing outside the run directory (which holds only the run's testbed.log saying why).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import last_json, run_cli
from test_partition_cli import INVENTORY, experiment
from testbed.bundle import load_manifest
from testbed.hashing import sha256_file
from testbed.outdir import MARKER
from testbed.signing import SIGNATURE

pytest.importorskip("cryptography")


@dataclass(frozen=True)
class Signed:
    bench: Path        # the bench folder: inventory.yaml, e.yaml, bundles/
    exp: Path
    bundle: Path       # bundles/tiny-part, as `testbed partition --sign` wrote it
    key: Path
    pub: Path
    fingerprint: str


def _error_line(proc) -> str:
    """The one line a refusal prints (stderr holds nothing else), without a traceback."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("testbed: error: "), proc.stderr[-2000:]
    return lines[0]


def _snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``roots``: (size, mtime_ns), keyed by path."""
    out = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                st = os.lstat(os.path.join(folder, name))
                out[os.path.join(folder, name)] = (st.st_size if name in files else 0, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Signed:
    keys = tmp_path_factory.mktemp("keys")   # outside the bench folder, as docs/signing.md asks
    bench = tmp_path_factory.mktemp("bench")
    proc = run_cli("keygen", "--out", str(keys / "lab.key"), "--comment", "test lab", "--json", cache=model_cache,
                   cwd=keys)
    assert proc.returncode == 0, proc.stderr[-2000:]
    made = last_json(proc.stdout)
    (bench / "inventory.yaml").write_text(INVENTORY)
    exp = experiment(bench / "e.yaml")
    proc = run_cli("partition", str(exp), "--sign", str(keys / "lab.key"), "--threads", "1", "--json",
                   cache=model_cache, cwd=bench)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = last_json(proc.stdout)
    assert doc["signed_by"] == made["fingerprint"] and doc["bundle"] == str(bench / "bundles" / "tiny-part")
    return Signed(bench=bench, exp=exp, bundle=bench / "bundles" / "tiny-part", key=keys / "lab.key",
                  pub=keys / "lab.key.pub", fingerprint=made["fingerprint"])


def _copy(signed: Signed, dest: Path) -> Path:
    shutil.copytree(signed.bundle, dest, symlinks=True)
    return dest


# -- partition --sign ---------------------------------------------------------------------------

def test_partition_signs_the_users_copy_and_the_marker_lists_the_signature(signed: Signed,
                                                                            model_cache: Path) -> None:
    b = signed.bundle
    sig = json.loads((b / SIGNATURE).read_text())
    assert sig["fingerprint"] == signed.fingerprint and sig["algorithm"] == "ed25519"
    m = load_manifest(b)
    assert m["experiment"]["sha256"] == sha256_file(b / "experiment.yaml")
    marker = json.loads((b / MARKER).read_text())
    assert SIGNATURE in json.dumps(marker)   # ours: --force manages it with everything else we wrote
    # the cache's bundle, which the copy came from, is not signed
    assert not (model_cache / f"partition-{m['bundle_key']}" / "bundle" / SIGNATURE).exists()
    proc = run_cli("verify", str(b), "--trusted", str(signed.pub), "--json", cache=model_cache, cwd=signed.bench)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert last_json(proc.stdout)["signer"]["fingerprint"] == signed.fingerprint


def test_force_without_sign_replaces_the_signature_too(signed: Signed, model_cache: Path, tmp_path: Path) -> None:
    out = _copy(signed, tmp_path / "b")
    proc = run_cli("partition", str(signed.exp), "--out", str(out), "--force", "--threads", "1",
                   cache=model_cache, cwd=signed.bench)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (out / SIGNATURE).exists() and load_manifest(out)["experiment"]["sha256"]


@pytest.mark.parametrize("case", ["public key", "readable by others", "missing", "inside the output folder"])
def test_a_bad_signing_key_is_refused_before_any_work(signed: Signed, model_cache: Path, tmp_path: Path,
                                                       case: str) -> None:
    out = tmp_path / "out"
    key = tmp_path / "k"
    if case == "public key":
        shutil.copyfile(signed.pub, key)
    elif case == "readable by others":
        shutil.copyfile(signed.key, key)
        key.chmod(0o644)
    elif case == "inside the output folder":   # an earlier output of ours, with the key put beside it
        _copy(signed, out)
        key = out / "lab.key"
        shutil.copyfile(signed.key, key)
        key.chmod(0o600)
    before = _snapshot(tmp_path)
    proc = run_cli("partition", str(signed.exp), "--sign", str(key), "--out", str(out), "--force",
                   cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 2
    line = _error_line(proc)
    assert str(key) in line and "PRIVATE KEY" not in line
    assert _snapshot(tmp_path) == before


def test_compare_signs_each_methods_bundle(signed: Signed, model_cache: Path, tmp_path: Path) -> None:
    from testbed.signing import verify_bundle

    proc = run_cli("partition", str(signed.exp), "--compare", "--sign", str(signed.key), "--out", str(tmp_path / "cmp"),
                   "--threads", "1", cache=model_cache, cwd=signed.bench)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for method in ("nonn", "resilient"):
        assert verify_bundle(tmp_path / "cmp" / method, trusted=[signed.pub]).fingerprint == signed.fingerprint
    marker = json.loads((tmp_path / "cmp" / MARKER).read_text())
    assert f"nonn/{SIGNATURE}" in json.dumps(marker) and f"resilient/{SIGNATURE}" in json.dumps(marker)


# -- run --bundle --require-signed ---------------------------------------------------------------

@pytest.mark.slow
def test_a_signed_bundle_runs_and_the_run_records_its_signer(signed: Signed, model_cache: Path,
                                                             tmp_path: Path) -> None:
    proc = run_cli("run", str(signed.exp), "--bundle", str(signed.bundle), "--require-signed", str(signed.pub),
                   "--headless", "--json", "--samples", "20", "--output", str(tmp_path / "runs"),
                   cache=model_cache, cwd=signed.bench)
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = last_json(proc.stdout)
    assert s["samples"] == 20 and s["completed"] + s["timed_out"] + s["unresolved"] == 20 and s["complete"] > 0
    run_json = json.loads((Path(s["run_dir"]) / "run.json").read_text())
    signer = run_json["bundle"]["signed_by"]
    assert signer["fingerprint"] == signed.fingerprint and signer["comment"] == "test lab"
    assert signer["manifest_sha256"] == sha256_file(signed.bundle / "manifest.json")
    assert signer["trusted_file"] == f"{signed.pub}:1"
    assert f"signed by {signed.fingerprint}" in (Path(s["run_dir"]) / "testbed.log").read_text()


@pytest.mark.slow
def test_a_signed_partition_folder_is_still_the_experiments_bundle_for_a_plain_run(signed: Signed,
                                                                                     model_cache: Path,
                                                                                     tmp_path: Path) -> None:
    proc = run_cli("run", str(signed.exp), "--headless", "--json", "--samples", "5", "--output",
                   str(tmp_path / "runs"), cache=model_cache, cwd=signed.bench)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "bundle: bundles/tiny-part, as testbed partition wrote it" in proc.stderr
    run_json = json.loads((Path(last_json(proc.stdout)["run_dir"]) / "run.json").read_text())
    assert run_json["bundle"]["dir"] == "bundles/tiny-part" and run_json["bundle"]["signed_by"] is None


def _tamper(bundle: Path, case: str, signed: Signed, tmp_path: Path) -> tuple[list[str], str]:
    """Change ``bundle`` as ``case`` says; the trusted key files to give, and what the refusal names."""
    if case == "manifest changed after signing":
        m = json.loads((bundle / "manifest.json").read_text())
        m["evaluation"]["test_accuracy"] = 0.99
        (bundle / "manifest.json").write_text(json.dumps(m, indent=2))
        return [str(signed.pub)], "bad signature: manifest.json was changed after"
    if case == "experiment copy changed":
        with open(bundle / "experiment.yaml", "a") as fh:
            fh.write("# changed\n")
        return [str(signed.pub)], "does not match the signed manifest's"
    if case == "unsigned":
        (bundle / SIGNATURE).unlink()
        return [str(signed.pub)], "unsigned bundle (no manifest.sig)"
    assert case == "another lab's key"
    proc = run_cli("keygen", "--out", str(tmp_path / "other.key"), cache=tmp_path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return [str(tmp_path / "other.key.pub")], f"signed by an untrusted key {signed.fingerprint}"


CASES = ["manifest changed after signing", "experiment copy changed", "unsigned", "another lab's key"]


@pytest.mark.parametrize("case", CASES)
def test_run_refuses_a_bundle_that_is_not_as_signed(signed: Signed, model_cache: Path, tmp_path: Path,
                                                     case: str) -> None:
    bundle = _copy(signed, tmp_path / "bundle")
    trusted, expected = _tamper(bundle, case, signed, tmp_path)
    runs = tmp_path / "runs"
    before = _snapshot(tmp_path, signed.bench, model_cache, signed.key.parent)
    flags = [a for t in trusted for a in ("--require-signed", t)]
    proc = run_cli("run", str(signed.exp), "--bundle", str(bundle), *flags, "--headless", "--json", "--output",
                   str(runs), cache=model_cache, cwd=signed.bench)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert expected in _error_line(proc)
    after = _snapshot(tmp_path, signed.bench, model_cache, signed.key.parent)
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    run_dirs = list(runs.iterdir())
    assert len(run_dirs) == 1, changed
    assert all(p == str(runs) or p.startswith(str(run_dirs[0])) for p in changed), changed
    assert sorted(p.name for p in run_dirs[0].iterdir()) == ["testbed.log"]   # refused before the run began
    assert "stopped: " in (run_dirs[0] / "testbed.log").read_text()


@pytest.mark.parametrize("case", ["manifest changed after signing", "unsigned"])
def test_deploy_checks_the_signature_before_anything_else(signed: Signed, model_cache: Path, tmp_path: Path,
                                                          case: str) -> None:
    """deploy verifies before it reads the bundle's experiment copy or looks at a board, so a bench
    without ssh boards shows it: the refusal is the signature's, not the boards'."""
    bundle = _copy(signed, tmp_path / "bundle")
    trusted, expected = _tamper(bundle, case, signed, tmp_path)
    before = _snapshot(tmp_path, signed.bench, model_cache)
    proc = run_cli("deploy", "--bundle", str(bundle), "--require-signed", trusted[0], "--inventory",
                   str(signed.bench / "inventory.yaml"), cache=model_cache, cwd=signed.bench)
    assert proc.returncode == 2 and expected in _error_line(proc)
    assert _snapshot(tmp_path, signed.bench, model_cache) == before
    # the genuine bundle passes the check and goes on, to this bench's lack of ssh boards
    proc = run_cli("deploy", "--bundle", str(signed.bundle), "--require-signed", str(signed.pub), "--inventory",
                   str(signed.bench / "inventory.yaml"), cache=model_cache, cwd=signed.bench)
    assert proc.returncode == 2 and "no board has connect: ssh" in _error_line(proc)


@pytest.mark.parametrize("verb", ["run", "demo", "deploy"])
def test_require_signed_without_bundle_is_refused(signed: Signed, model_cache: Path, tmp_path: Path,
                                                  verb: str) -> None:
    args = {"run": ["run", str(signed.exp), "--inventory", str(signed.bench / "inventory.yaml"), "--output",
                    str(tmp_path / "runs")],
            "demo": ["demo", "--output", str(tmp_path / "runs")],
            "deploy": ["deploy", str(signed.exp), "--inventory", str(signed.bench / "inventory.yaml")]}[verb]
    proc = run_cli(*args, "--require-signed", str(signed.pub), "--headless" if verb != "deploy" else "--json",
                   cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 2
    assert "--require-signed: expected --bundle DIR with it" in _error_line(proc)
    assert not (tmp_path / "runs").exists()


# -- the spine's weights and bundle are keyed by the data (testbed.model, prepare_bundle) -----------

def test_the_spines_cache_folder_holds_the_datas_sha256_and_its_bundle(tmp_path: Path) -> None:
    """Another dataset of the same name trains into another folder, and prepare_bundle's bundle sits
    beside the weights it was exported from."""
    import dataclasses

    from conftest import digits_experiment
    from testbed import weightcache
    from testbed.config import load_experiment
    from testbed.data import load_dataset
    from testbed.model import StudentsConfig, load_or_train
    from testbed.orchestrator import prepare_bundle

    exp = load_experiment(digits_experiment(tmp_path / "exp.yaml"))
    exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, epochs=1))
    prepared = prepare_bundle(exp, cache_dir=tmp_path / "cache", threads=1)
    rec = prepared.training
    ds = load_dataset("digits", seed=exp.seed)
    assert rec["identity"]["data"] == weightcache.data_identity(ds)
    assert prepared.bundle_dir.parent.name == rec["entry"] and (prepared.bundle_dir.parent / "weights.pt").is_file()
    cfg = StudentsConfig(**rec["config"])
    other = dataclasses.replace(ds, y_train=ds.y_train[::-1].copy())   # same name, other data
    _, again = load_or_train(cfg, other, cache_dir=tmp_path / "cache")
    assert again["cached"] is False and again["entry"] != rec["entry"]
    _, same = load_or_train(cfg, ds, cache_dir=tmp_path / "cache")
    assert same["cached"] is True and same["entry"] == rec["entry"]
