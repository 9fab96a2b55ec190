"""Sweep files and their grids: overrides, expansion, keys, validation and the offline expectation.

Pure: files are read and checked, nothing runs (tests/test_sweep_run.py runs sweeps).
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from conftest import two_wearable_inventory
from testbed.config import load_experiment, load_inventory
from testbed.config.overlay import apply_overrides, parse_assignment
from testbed.errors import ConfigError
from testbed.report.grid import OutageSpec, expand, load_sweep
from testbed.report.sweep import offline_expected_accuracy

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "sweeps"

EXPERIMENT = """\
name: g
seed: 0
dataset: {{name: digits}}
partition:
  method: resilient
  students: 2
  parts: 1
  teacher: {{widths: [8, 16, 32], epochs: 2}}
assignment: {{a: 0, b: 1, edge: merge}}
run: {{samples: {samples}, rate_hz: 20, deadline_ms: 250, timeout_ms: 1500, output: {output}}}
"""


def files(tmp_path: Path, sweep: str, *, samples: int = 30, output: str = "runs", profile: str = "hbc-1312k",
          bench: str = "one") -> Path:
    (tmp_path / "exp.yaml").write_text(EXPERIMENT.format(samples=samples, output=output))
    (tmp_path / "inv.yaml").write_text(two_wearable_inventory(bench=bench, profile=profile))
    (tmp_path / "sweep.yaml").write_text(sweep)
    return tmp_path / "sweep.yaml"


GRID = """\
name: s
experiment: exp.yaml
benches: [inv.yaml]
grid:
  method: [nonn, resilient]
  availability: [1.0, 0.8]
  seed: [0, 1, 2]
"""


# --------------------------------------------------------------------------- overrides


def test_overrides_select_links_by_name_or_star_promote_a_preset_and_delete_with_null() -> None:
    data = {"links": [{"name": "a", "profile": "hbc-164k"}, {"name": "b", "profile": {"preset": "ideal", "seed": 3}}]}
    out, touched = apply_overrides(
        data, {"links.*.profile.rate_bps": 1000, "links.b.profile.seed": None},
        sources={"links.*.profile.rate_bps": "s.yaml:4"}, lists={"links": "name"},
        promote={"links.*.profile": "preset"})
    assert out["links"][0]["profile"] == {"preset": "hbc-164k", "rate_bps": 1000}
    assert out["links"][1]["profile"] == {"preset": "ideal", "rate_bps": 1000}
    assert data["links"][0]["profile"] == "hbc-164k"   # the input is not changed
    assert touched == {"links[0].profile.rate_bps": "s.yaml:4", "links[1].profile.rate_bps": "s.yaml:4",
                       "links[1].profile.seed": "<override>"}


@pytest.mark.parametrize("key, needle", [
    ("links.c.profile.rate_bps", "no item named 'c'; expected * or one of a"),
    ("links.a", "expected a key inside the links item"),
    ("run..x", "expected a dotted key of names"),
    ("name.x", "holds 'n', not a mapping"),
])
def test_bad_override_keys_are_one_line_errors_naming_the_source(key: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides({"name": "n", "links": [{"name": "a"}]}, {key: 1}, sources={key: "--set"},
                        lists={"links": "name"})
    assert needle in str(info.value) and str(info.value).startswith("--set") and "\n" not in str(info.value)


def test_parse_assignment_reads_the_value_as_yaml() -> None:
    assert parse_assignment("run.deadline_ms=200", flag="--set") == ("run.deadline_ms", 200)
    assert parse_assignment("links.*.profile={preset: ideal}", flag="--set") == ("links.*.profile",
                                                                                  {"preset": "ideal"})
    assert parse_assignment("partition.parts=null", flag="--set") == ("partition.parts", None)
    with pytest.raises(ConfigError, match="--set: expected KEY=VALUE"):
        parse_assignment("run.deadline_ms", flag="--set")
    with pytest.raises(ConfigError, match=r"--set: x: the value is not valid YAML"):
        parse_assignment("x=[1, 2", flag="--set")


def test_an_invalid_override_is_checked_by_the_files_own_rules(tmp_path: Path) -> None:
    files(tmp_path, GRID)
    exp = load_experiment(tmp_path / "exp.yaml", overrides={"run.deadline_ms": 100}, sources={})
    assert exp.run.deadline_ms == 100
    with pytest.raises(ConfigError) as info:   # timeout_ms must stay above deadline_ms
        load_experiment(tmp_path / "exp.yaml", overrides={"run.deadline_ms": 5000},
                        sources={"run.deadline_ms": "sweep.yaml:9"})
    assert "exp.yaml:10: run.timeout_ms: expected a number > deadline_ms (5000)" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_experiment(tmp_path / "exp.yaml", overrides={"run.deadline_ms": -1},
                        sources={"run.deadline_ms": "sweep.yaml:9"})
    assert str(info.value).startswith("sweep.yaml:9: run.deadline_ms: expected a number")
    inv = load_inventory(tmp_path / "inv.yaml", overrides={"links.a-edge.profile.rate_bps": 164000}, sources={})
    assert [l.profile.rate_bps for l in inv.links] == [164000, 1312500]


# --------------------------------------------------------------------------- expansion and keys


def test_the_grid_is_crossed_in_order_with_the_last_axis_fastest(tmp_path: Path) -> None:
    spec = load_sweep(files(tmp_path, GRID))
    points = expand(spec, spec.benches)
    combos = list(itertools.product(["nonn", "resilient"], [1.0, 0.8], [0, 1, 2]))
    assert [(p.values["method"], p.values["availability"], p.values["seed"]) for p in points] == combos
    assert points[0].label == "method=nonn/availability=1.0/seed=0"
    assert len({p.key for p in points}) == 12 and all(len(p.key) == 16 for p in points)
    nonn = points[0]
    assert nonn.experiment_overrides["partition.parts"] is None     # NoNN: one part per student
    assert nonn.describe["parts"] == 1 and nonn.describe["method"] == "nonn"   # the configuration's M
    down = points[3]   # nonn, availability 0.8, seed 0
    assert down.inventory_overrides == {"links.*.profile.outage_process": {
        "distribution": "exponential", "mean_up_s": 4.0, "mean_down_s": 1.0}}
    assert down.describe["availability"] == pytest.approx(0.8) and down.describe["mean_outage_s"] == 1.0
    assert points[0].inventory_overrides == {"links.*.profile.outage_process": None}
    assert "--set-inventory" in down.set_args() and "seed=0" in down.set_args()


def test_keys_depend_on_the_effective_configuration_only(tmp_path: Path) -> None:
    def keys(name: str, **kw: object) -> dict[str, str]:
        (tmp_path / name).mkdir()
        spec = load_sweep(files(tmp_path / name, GRID, **kw))
        return {p.label: p.key for p in expand(spec, spec.benches)}

    base = keys("base")
    # where runs go and what the bench is called do not change a point
    assert keys("moved", output="elsewhere", bench="other") == base
    # the base experiment's samples and a link's profile do
    assert set(keys("more", samples=31).values()).isdisjoint(base.values())
    assert set(keys("slow", profile="hbc-164k").values()).isdisjoint(base.values())


def test_configs_are_crossed_with_the_grid_and_later_settings_win(tmp_path: Path) -> None:
    sweep = GRID.replace("grid:", """\
set: {run.samples: 20, deadline_ms: 200}
configs:
  - {label: short, set: {run.samples: 10}}
  - {label: slow, set: {links.a-edge.profile.rate_bps: 164000}}
grid:""")
    spec = load_sweep(files(tmp_path, sweep))
    points = expand(spec, spec.benches)
    assert len(points) == 24 and points[0].label.startswith("short/method=nonn")
    assert points[0].values["config"] == "short" and points[0].experiment_overrides["run.samples"] == 10
    assert points[12].experiment_overrides["run.samples"] == 20
    assert points[12].inventory_overrides["links.a-edge.profile.rate_bps"] == 164000
    assert points[12].describe["rate_bps"] == 164000 and points[12].describe["deadline_ms"] == 200


@pytest.mark.parametrize("edit, needle", [
    (("availability: [1.0, 0.8]", "availability: [1.0, 1.5]"), "sweep.yaml:6: grid.availability[1]: expected a link "
                                                              "availability"),
    (("method: [nonn, resilient]", "method: [nonn, joint]"), "sweep.yaml:5: grid.method[1]: expected a partition"),
    (("seed: [0, 1, 2]", "seed: [0, 0]"), "sweep.yaml:7: grid.seed: expected distinct values"),
    (("seed: [0, 1, 2]", "seed: []"), "sweep.yaml:7: grid.seed: expected a non-empty list"),
    (("seed: [0, 1, 2]", "run.nope: [1]"), "sweep.yaml:7: run.nope: unknown key"),
    (("seed: [0, 1, 2]", "run.samples: [0]"), "sweep.yaml:7: run.samples: expected an integer from 1"),
    (("seed: [0, 1, 2]", "links.z-edge.encoding: [f16]"), "sweep.yaml:7: links.z-edge.encoding: no item named"),
    (("benches: [inv.yaml]", "benches: [inv.yaml]\nsurprise: 1"), "sweep.yaml:4: surprise: unknown key"),
])
def test_sweep_file_errors_name_the_sweep_files_line(tmp_path: Path, edit: tuple[str, str], needle: str) -> None:
    path = files(tmp_path, GRID.replace(*edit))
    with pytest.raises(ConfigError) as info:
        spec = load_sweep(path)
        expand(spec, spec.benches)
    message = str(info.value).replace(str(tmp_path) + "/", "")
    assert needle in message and "\n" not in message


def test_a_point_no_bench_can_run_and_disagreeing_benches_are_refused(tmp_path: Path) -> None:
    path = files(tmp_path, GRID.replace("seed: [0, 1, 2]", "assignment: [{a: 0, c: 1, edge: merge}]"))
    spec = load_sweep(path)
    with pytest.raises(ConfigError, match="cannot run on any bench"):
        expand(spec, spec.benches)
    spec = load_sweep(files(tmp_path, GRID))
    other = tmp_path / "inv2.yaml"
    other.write_text(two_wearable_inventory(bench="two", profile="hbc-164k"))
    with pytest.raises(ConfigError, match="differ in boards or links"):
        expand(spec, [tmp_path / "inv.yaml", other])
    same = tmp_path / "inv3.yaml"
    same.write_text(two_wearable_inventory(bench="three"))
    assert all(p.benches == (0, 1) for p in expand(spec, [tmp_path / "inv.yaml", same]))


def test_the_example_sweep_has_the_issues_grid() -> None:
    spec = load_sweep(EXAMPLES / "failure_rate.yaml")
    points = expand(spec, spec.benches)
    assert len(points) == 4 * 2 * 5 * 3
    configs = {(p.describe["dataset"], p.describe["students"], p.describe["parts"], p.describe["method"])
               for p in points}
    assert configs == {(d, s, m, method) for d in ("fashion-mnist", "digits") for s, m in ((4, 2), (6, 3))
                       for method in ("nonn", "resilient")}
    assert sorted({p.describe["availability"] for p in points}) == [0.6, 0.8, 0.9, 0.95, 1.0]
    assert {p.benches for p in points if p.describe["students"] == 6} == {(1,)}


def test_the_example_link_rate_sweep_reuses_the_failure_sweeps_digits_bundles() -> None:
    from testbed.report.sweep import bundle_identity

    rate = load_sweep(EXAMPLES / "link_rate.yaml")
    points = expand(rate, rate.benches)
    assert sorted({(p.describe["method"], p.describe["rate_bps"]) for p in points}) == sorted(
        (m, float(r)) for m in ("nonn", "resilient") for r in (1312500, 164000, 41000, 20000, 12000))
    assert {p.describe["availability"] for p in points} == {1.0}
    failure = load_sweep(EXAMPLES / "failure_rate.yaml")
    wanted = {bundle_identity(load_experiment(failure.experiment, overrides=p.experiment_overrides, sources={}))
              for p in expand(failure, failure.benches)
              if p.values.get("config") == "digits-s4m2" and p.describe["seed"] == 0}
    got = {bundle_identity(load_experiment(rate.experiment, overrides=p.experiment_overrides, sources={}))
           for p in points}
    assert got == wanted and len(got) == 2   # one bundle per method, trained once for both sweeps


# --------------------------------------------------------------------------- offline expectation


def test_offline_expectation_is_the_k_failure_table_weighted_by_the_binomial() -> None:
    means = {0: 0.9, 1: 0.7, 2: 0.5, 3: 0.3}
    manifest = {"students": 4, "classes": list("0123456789"),
                "evaluation": {"resilience": [{"k": k, "mean": m} for k, m in means.items()]}}
    a = 0.8
    brute = 0.0   # every up/down pattern of four iid links, the failed set's k giving the accuracy
    for pattern in itertools.product([True, False], repeat=4):
        k = pattern.count(False)
        p = a ** (4 - k) * (1 - a) ** k
        brute += p * (means[k] if k < 4 else 0.1)
    assert offline_expected_accuracy(manifest, a) == pytest.approx(brute)
    assert offline_expected_accuracy(manifest, 1.0) == pytest.approx(0.9)
    assert offline_expected_accuracy({"students": 4, "evaluation": {}}, a) is None
    # a bundle is untrusted: a malformed table gives no expectation, never an exception
    for bad in ({"students": "four", "evaluation": manifest["evaluation"]},
                {"students": 4, "evaluation": {"resilience": [{"k": "x", "mean": 0.5}]}},
                {"students": 4, "evaluation": {"resilience": [{"k": k, "mean": 7.0} for k in range(4)]}},
                {"students": 4, "evaluation": "no"}, {**manifest, "classes": 10}):
        assert offline_expected_accuracy(bad, a) is None


def test_outage_spec_turns_an_availability_into_an_on_off_process() -> None:
    spec = OutageSpec(mean_outage_s=2.0)
    assert spec.process(1.0) is None
    proc = spec.process(0.6)
    assert proc is not None and proc["mean_down_s"] / (proc["mean_up_s"] + proc["mean_down_s"]) == pytest.approx(0.4)
    json.dumps(proc)


def test_the_book_rewrites_a_renamed_points_record_and_counts_what_finished_before(tmp_path: Path) -> None:
    from testbed.report.sweep import _Book

    spec = load_sweep(files(tmp_path, GRID))
    benches = [tmp_path / "inv.yaml"]
    points = expand(spec, benches)
    done, other = points[0], points[1]
    (tmp_path / "out" / "points").mkdir(parents=True)
    old = {"key": done.key, "label": "an old label", "describe": {"method": "old"},
           "attempts": [{"state": "finished", "run_dir": None, "seconds": 1.0}]}
    (tmp_path / "out" / "points" / f"{done.key}.json").write_text(json.dumps(old))
    (tmp_path / "out" / "points" / f"{other.key}.json").write_text('{"key": "x", "attempts": "torn"}')
    third = points[2]   # hand-edited attempts: unreadable ones are left out, the point runs again
    (tmp_path / "out" / "points" / f"{third.key}.json").write_text(json.dumps(
        {"key": third.key, "attempts": [7, {"state": "finished", "run_dir": "../../etc"},
                                        {"state": "finished", "run_dir": "/etc"}, {"state": ["x"]}]}))
    book = _Book(root=tmp_path / "out", spec=spec, points=points, benches=benches)
    book.load()
    rec = json.loads((tmp_path / "out" / "points" / f"{done.key}.json").read_text())
    assert rec["label"] == done.label and rec["describe"] == dict(done.describe)
    assert rec["attempts"] == old["attempts"] and rec["state"] == "finished"
    assert book.records[other.key]["state"] == "pending"   # a torn record is a point not yet run
    assert book.records[third.key]["state"] == "pending" and book.records[third.key]["attempts"] == []
    assert book.skipped == 1
    book.write_tables()
    doc = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert (doc["done"], doc["skipped"], doc["pending"]) == (1, 1, len(points) - 1)
