"""testbed report and testbed compare, from a recorded run directory and a recorded sweep directory.

Fixtures (tests/fixtures/): ``run-digits`` is a real `testbed demo --dataset digits --samples 100
--rate 6` run (ankle-edge down from 10 s to 15 s), trimmed by ``trim_run.py``; ``sweep-failure``
is a sweep directory in the sweep engine's format (2 methods x 3 availabilities x 3 seeds, one
point interrupted). Every test copies them into tmp_path first: a report writes beside its input.
No broker, no agents, no timing thresholds.
"""
from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import json
import math
import os
import shutil
import statistics
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from linkemu.errors import HarnessError
from testbed.errors import ConfigError
from testbed.report.compare import compare_rows, flatten_summary
from testbed.report.runreport import load_run
from testbed.report.sweepreport import mean_ci95, t975
from testbed.reportcmd import add_report_commands, compare_command, report_command

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T975 = {1: 12.706204736174698, 2: 4.302652729749464}   # Student t, 0.975 quantile (scipy.stats.t.ppf)


# -- helpers --------------------------------------------------------------------------------

@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    dest = tmp_path / "run-digits"
    shutil.copytree(FIXTURES / "run-digits", dest)
    return dest


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    dest = tmp_path / "sweeps" / "failure"
    shutil.copytree(FIXTURES / "sweep-failure", dest)
    return dest


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The two commands as testbed.cli.main runs them: parse, call, a HarnessError -> one line + its code."""
    parser = argparse.ArgumentParser(prog="testbed")
    add_report_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args))
    except HarnessError as exc:
        print(f"testbed: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    out, err = capsys.readouterr()
    return code, out, err


def last_json(stdout: str) -> dict:
    return json.loads([ln for ln in stdout.splitlines() if ln.strip()][-1])


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()[:24]
    assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "srcset", "poster", "data") and value is not None:
                self.refs.append(value)
                if tag == "img" and name == "src":
                    self.srcs.append(value)


def tree_digest(folder: Path, *, skip: str) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).parts[0] != skip}


# -- a run ----------------------------------------------------------------------------------

def test_run_report_writes_pngs_and_a_self_contained_html(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from matplotlib.image import imread

    before = tree_digest(run_dir, skip="report")
    code, out, _ = cli(["report", str(run_dir), "--json"], capsys)
    assert code == 0
    doc = last_json(out)
    report = run_dir / "report"
    assert doc["kind"] == "run" and Path(doc["out"]) == report.resolve()
    names = [Path(f).name for f in doc["figures"]]
    assert names == ["accuracy.png", "latency.png", "links.png", "energy.png"]
    for name in names:
        width, height = png_size(report / name)
        assert width >= 600 and height >= 300
        assert imread(report / name).shape[:2] == (height, width)
    html = (report / "report.html").read_text(encoding="utf-8")
    parser = _Images()
    parser.feed(html)
    assert len(parser.srcs) == len(names)
    for src, name in zip(parser.srcs, names):
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix):], validate=True) == (report / name).read_bytes()
    assert all(ref.startswith("data:") for ref in parser.refs)
    assert "http://" not in html and "https://" not in html
    md = (report / "report.md").read_text()
    assert all(f"]({name})" in md for name in names)
    assert "| accuracy | 99.0 % |" in md
    assert tree_digest(run_dir, skip="report") == before   # nothing else in the run directory changed


def test_run_data_reads_the_outage_and_every_sample() -> None:
    run = load_run(FIXTURES / "run-digits")
    assert len(run.samples) == run.summary["samples"] == 100
    (start, end), = run.links["ankle-edge"].outages
    assert abs(start - 10.0) < 0.1 and abs(end - 15.0) < 0.1
    assert run.links["ankle-edge"].outage_source == "fault events"
    assert run.links["wrist-edge"].outages == [] and run.links["chest-edge"].outages == []
    partial = [t for t, r in run.samples if r.status == "partial"]
    assert len(partial) == run.summary["partial"] == 30
    assert all(start - 0.5 <= t <= end + 0.5 for t in partial)
    assert run.links["ankle-edge"].drops["outage"][-1] == 30
    assert run.summary_source == "summary.json"


def test_report_is_rewritten_and_a_foreign_folder_refused(run_dir: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["report", str(run_dir)], capsys)[0] == 0
    assert cli(["report", str(run_dir)], capsys)[0] == 0   # our own report: replaced
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    code, _, err = cli(["report", str(run_dir), "--out", str(foreign)], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and str(foreign) in err and "notes.txt" in err
    assert (foreign / "notes.txt").read_text() == "mine"


def test_a_run_without_summary_json_is_reported_from_its_events(run_dir: Path) -> None:
    expected = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").unlink()
    run = load_run(run_dir)
    assert run.summary_source == "events.jsonl"
    assert run.summary["accuracy"] == expected["accuracy"] and run.summary["partial"] == expected["partial"]


def test_a_run_stopped_before_its_first_sample_still_reports(run_dir: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    lines = (run_dir / "events.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "events.jsonl").write_text("".join(lines[:5]))   # run_start and a few status events
    (run_dir / "summary.json").unlink()
    code, out, err = cli(["report", str(run_dir), "--json"], capsys)
    assert code == 0, err
    names = [Path(f).name for f in last_json(out)["figures"]]
    assert names == ["accuracy.png", "latency.png", "links.png"]   # no energy: nothing was measured
    assert all(png_size(run_dir / "report" / n) for n in names)
    assert "figures from events.jsonl" in (run_dir / "report" / "report.md").read_text()


# -- a sweep --------------------------------------------------------------------------------

def _finished_accuracies(sweep_dir: Path, method: str, availability: float) -> list[float]:
    with open(sweep_dir / "points.csv", newline="") as fh:
        return [float(r["accuracy"]) for r in csv.DictReader(fh)
                if r["state"] == "finished" and r["method"] == method and float(r["availability"]) == availability]


def _md_row(md: str, method: str, availability: str) -> list[str]:
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in md.splitlines() if ln.startswith(f"| {method} |")]
    return next(r for r in rows if r[1] == availability)


def test_sweep_report_opens_with_accuracy_against_availability(sweep_dir: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["report", str(sweep_dir), "--json"], capsys)
    assert code == 0
    doc = last_json(out)
    report = sweep_dir / "report"
    assert [Path(f).name for f in doc["figures"]] == ["accuracy_vs_availability.png"]   # one rate: no latency figure
    png_size(report / "accuracy_vs_availability.png")
    md = (report / "report.md").read_text()
    first_image = md[md.index("!["):].split("\n", 1)[0]
    assert "accuracy_vs_availability.png" in first_image

    # computed here, independently: mean, sample sd, Student t with n - 1 degrees of freedom
    for method, avail, label in (("nonn", 0.6, "0.6"), ("resilient", 0.6, "0.6"), ("resilient", 0.9, "0.9")):
        values = _finished_accuracies(sweep_dir, method, avail)
        mean = statistics.mean(values)
        ci = T975[len(values) - 1] * statistics.stdev(values) / math.sqrt(len(values))
        row = _md_row(md, method, label)
        assert row[2] == f"{mean:.4f} ± {ci:.4f}"
        assert row[3] == f"{min(values):.4f}" and row[4] == str(len(values))
    # the interrupted point (resilient, 0.6, seed 2: accuracy 0.31 in the CSV) is missing, not averaged
    assert _md_row(md, "resilient", "0.6")[4:6] == ["2", "1"]
    assert "method=resilient availability=0.6 seed=2" in md
    cell = next(r for r in doc["rows"] if r["method"] == "resilient" and r["availability"] == 0.6)
    assert cell["seeds"] == 2 and cell["missing"] == 1 and cell["accuracy_mean"] == 0.84
    assert (cell["dataset"], cell["S"], cell["M"]) == ("digits", 4, 2)
    html = (report / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 1 and "https://" not in html


def test_sweep_with_several_rates_and_configurations(sweep_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with open(sweep_dir / "points.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        columns, rows = list(reader.fieldnames or []), list(reader)
    more = []
    for i, r in enumerate(rows):
        more.append({**r, "key": f"{i:016x}", "rate_bps": "164000.0", "latency_ms.p50": "40.5"})
        more.append({**r, "key": f"{i + 100:016x}", "dataset": "fashion-mnist", "students": "6", "parts": "3",
                     "offline_expected_accuracy": ""})
    with open(sweep_dir / "points.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows + more)
    code, out, _ = cli(["report", str(sweep_dir), "--json"], capsys)
    assert code == 0
    doc = last_json(out)
    assert [Path(f).name for f in doc["figures"]] == ["accuracy_vs_availability.png", "latency_vs_rate.png"]
    two_panels, _ = png_size(sweep_dir / "report" / "accuracy_vs_availability.png")
    assert two_panels >= 1000
    md = (sweep_dir / "report" / "report.md").read_text()
    assert "**digits, S=4, M=2**" in md and "**fashion-mnist, S=6, M=3**" in md
    assert {(r["dataset"], r["S"]) for r in doc["rows"]} == {("digits", 4), ("fashion-mnist", 6)}


def test_student_t_and_interval() -> None:
    assert t975(1) == pytest.approx(T975[1], abs=1e-5)
    assert t975(2) == pytest.approx(T975[2], abs=1e-5)
    assert t975(40) == pytest.approx(2.021075, abs=1e-5)
    assert t975(120) == pytest.approx(1.979930, abs=1e-5)
    mean, ci = mean_ci95([0.85, 0.83])
    assert mean == pytest.approx(0.84) and ci == pytest.approx(T975[1] * statistics.stdev([0.85, 0.83]) / math.sqrt(2))
    assert mean_ci95([0.5]) == (0.5, None) and mean_ci95([]) == (None, None)


# -- flatten and compare --------------------------------------------------------------------

def test_flatten_summary_names_every_leaf() -> None:
    flat = flatten_summary({"accuracy": 0.9, "stopped": None, "latency_ms": {"p50": 9.0, "max": float("nan")},
                            "links": [{"name": "a-b", "dropped": 3}], "ok": True, "pairs": [[1, 2]], "empty": {}})
    assert flat == {"accuracy": 0.9, "stopped": None, "latency_ms.p50": 9.0, "latency_ms.max": None,
                    "links.a-b.dropped": 3, "ok": 1, "pairs.0.0": 1, "pairs.0.1": 2}
    real = flatten_summary(json.loads((FIXTURES / "run-digits" / "summary.json").read_text()))
    assert real["links.ankle-edge.dropped"] == 30 and real["links.ankle-edge.dropped_outage"] == 30
    assert real["latency_ms.p50"] == 9.881 and real["boards.edge.samples"] == 100
    assert real["energy.wrist.mj_per_inference.p50"] == 3.9699 and real["energy.wrist.modelled"] == 1


def _edited_copy(tmp_path: Path, name: str, edit=None) -> Path:
    """A copy of the run fixture whose summary.json ``edit`` (a function of the dict) changed."""
    dest = tmp_path / name
    shutil.copytree(FIXTURES / "run-digits", dest)
    if edit is not None:
        summary = json.loads((dest / "summary.json").read_text())
        edit(summary)
        (dest / "summary.json").write_text(json.dumps(summary))
    return dest


def _link(summary: dict, name: str) -> dict:
    return next(lk for lk in summary["links"] if lk["name"] == name)


def test_compare_two_runs_gives_the_differences(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def edit(s: dict) -> None:
        s.update(accuracy=0.95, dataset="fashion-mnist")
        s["latency_ms"]["p50"] = 12.5
        _link(s, "ankle-edge")["dropped"] = 45

    a, b = _edited_copy(tmp_path, "a"), _edited_copy(tmp_path, "b", edit)
    code, out, err = cli(["compare", str(a), str(b), "--json"], capsys)
    assert code == 0
    doc = last_json(out)
    assert doc["a"] == str(a) and doc["b"] == str(b)
    assert all(set(r) == {"figure", "a", "b", "diff"} for r in doc["rows"])
    rows = {r["figure"]: r for r in doc["rows"]}
    assert rows["accuracy"]["a"] == 0.99 and rows["accuracy"]["b"] == 0.95
    assert rows["accuracy"]["diff"] == pytest.approx(-0.04)
    assert rows["latency_ms.p50"]["diff"] == pytest.approx(12.5 - 9.881)
    assert rows["links.ankle-edge.dropped"]["diff"] == 15
    assert rows["links.wrist-edge.dropped"]["diff"] == 0
    assert rows["dataset"] == {"figure": "dataset", "a": "digits", "b": "fashion-mnist", "diff": None}
    assert "run_dir" not in rows and "run_id" not in rows
    assert "accuracy" in err   # the table goes to stderr when --json keeps stdout for the JSON
    rel = {r.figure: r for r in compare_rows([flatten_summary(json.loads((p / "summary.json").read_text()))
                                              for p in (a, b)])}
    assert rel["links.ankle-edge.dropped"].rel() == pytest.approx(0.5)


def test_report_of_several_runs_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    a = _edited_copy(tmp_path, "a")
    b = _edited_copy(tmp_path, "b", lambda s: s.update(accuracy=0.95))
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli(["report", str(a), str(b), "--json"], capsys)
    assert code == 0
    doc = last_json(out)
    assert doc["kind"] == "runs" and Path(doc["out"]) == (tmp_path / "reports" / "a-vs-b").resolve()
    assert [Path(f).name for f in doc["figures"]] == ["accuracy.png", "latency.png"]
    md = (tmp_path / "reports" / "a-vs-b" / "report.md").read_text()
    assert "| accuracy | 0.99 | 0.95 | -0.04 | -4.0 % |" in md
    assert not (a / "report").exists() and not (b / "report").exists()


# -- what a user gets wrong -----------------------------------------------------------------

def _garbage_run(tmp_path: Path) -> Path:
    d = tmp_path / "garbage"
    d.mkdir()
    (d / "events.jsonl").write_bytes(b"\x00\xffnot json\n{\"no\": \"type\"}\n[1, 2]\n")
    return d


def _not_a_run(tmp_path: Path) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    (d / "cat.jpg").write_bytes(b"\xff\xd8")
    return d


def _sweep_without_points(tmp_path: Path) -> Path:
    d = tmp_path / "sweep"
    shutil.copytree(FIXTURES / "sweep-failure", d)
    (d / "points.csv").unlink()
    return d


def _sweep_of_another_format(tmp_path: Path) -> Path:
    d = tmp_path / "sweep2"
    shutil.copytree(FIXTURES / "sweep-failure", d)
    doc = json.loads((d / "sweep.json").read_text())
    (d / "sweep.json").write_text(json.dumps({**doc, "format": 99}))
    return d


@pytest.mark.parametrize("make, says", [
    (lambda tmp: tmp / "no-such-run", "no such directory"),
    (_not_a_run, "neither a run nor a sweep directory"),
    (_garbage_run, "no run_start event"),
    (_sweep_without_points, "no points.csv"),
    (_sweep_of_another_format, "sweep format 1"),
])
def test_bad_report_inputs_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], make, says) -> None:
    path = make(tmp_path)
    code, out, err = cli(["report", str(path)], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and says in lines[0], err
    assert "Traceback" not in err and out == ""
    assert not (path / "report").exists()


def test_bad_compare_inputs_exit_2(run_dir: Path, sweep_dir: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    for other, says in ((tmp_path / "missing", "no such directory"), (sweep_dir, "expected a run directory"),
                        (_garbage_run(tmp_path), "no run_start event")):
        code, _, err = cli(["compare", str(run_dir), str(other)], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, err
    with pytest.raises(ConfigError, match="a sweep is reported on its own"):
        report_command([run_dir, sweep_dir], out=tmp_path / "mixed", as_json=False)
    with pytest.raises(ConfigError):
        compare_command(run_dir, tmp_path / "missing", as_json=True)


def test_testbed_cli_runs_report_once_wired(run_dir: Path) -> None:
    """Through ``python -m testbed`` once testbed/cli.py registers the commands."""
    from testbed.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    if "report" not in sub.choices:
        pytest.skip("testbed/cli.py does not register `report` yet (add_report_commands)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run([sys.executable, "-m", "testbed", "report", str(run_dir), "--json"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert last_json(proc.stdout)["kind"] == "run"
    bad = subprocess.run([sys.executable, "-m", "testbed", "report", str(run_dir / "nope")], capture_output=True,
                         text=True, env=env, timeout=300)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
