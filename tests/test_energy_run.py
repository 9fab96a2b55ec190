"""Energy through a real run: a simulated board whose meter is an INA260 (the register-level chip
model on a fake bus, chosen by the inventory like a real one), beside boards with the model meter.

The INA260 board's figures are measured ones (``modelled`` false) and must equal the chip's load,
3.0 W, within its LSBs; the others stay labelled modelled. Slow: a real broker and agents.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import DEMO_INVENTORY, digits_experiment, last_json, read_jsonl, run_cli

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent


def test_one_board_measured_by_an_ina260_on_a_fake_bus(tmp_path: Path, model_cache: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    inv = DEMO_INVENTORY.read_text()
    wrist = inv.index("  wrist:")
    inv = inv[:wrist] + inv[wrist:].replace("    energy: model", "    energy: {meter: ina260, rate_hz: 200}", 1)
    (tmp_path / "inventory.yaml").write_text(inv)
    exp = digits_experiment(tmp_path / "exp.yaml", samples=20, output=tmp_path / "runs")
    monkeypatch.setenv("HBC_TESTBED_METER_BUS", "inachip:bench_ina260_bus")   # tests only: the board's bus
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    proc = run_cli("run", str(exp), "--inventory", str(tmp_path / "inventory.yaml"), "--headless", "--json",
                   cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = last_json(proc.stdout)
    measured = s["energy"]["wrist"]
    assert measured["meter"] == "ina260" and measured["modelled"] is False and measured["rate_hz"] == 200.0
    assert measured["mean_w"] == pytest.approx(3.0, abs=0.02) and measured["idle_w"] == pytest.approx(3.0, abs=0.02)
    assert measured["inferences"] == 20
    assert all(s["energy"][b]["modelled"] is True for b in ("chest", "ankle", "edge"))

    run_dir = Path(s["run_dir"])
    rows = [r.split(",") for r in (run_dir / "power" / "wrist.csv").read_text().splitlines()[1:]]
    assert len(rows) > 50 and {r[1] for r in rows} == {"ina260"}
    for _t, _rail, mv, ma, mw in rows:      # 1.25 mV, 1.25 mA and 10 mW per LSB
        assert abs(float(mv) - 5000) <= 1.25 and abs(float(ma) - 600) <= 1.25 and abs(float(mw) - 3000) <= 10
    samples = [e for e in read_jsonl(run_dir / "events.jsonl") if e["type"] == "sample" and e["board"] == "wrist"]
    for e in samples:   # a steady 3 W: each window's energy is 3 W x its length; short ones are flagged
        assert e["energy_modelled"] is False
        assert e["energy_mj"] > 0 and e["active_mj"] == pytest.approx(0.0, abs=0.05 * e["energy_mj"] + 0.01)
    status = [e for e in read_jsonl(run_dir / "events.jsonl") if e["type"] == "status" and e["board"] == "wrist"
              and e.get("energy")]
    assert status and status[0]["energy"]["meter"] == "ina260" and status[0]["energy"]["modelled"] is False
    assert json.loads((run_dir / "summary.json").read_text())["energy"] == s["energy"]
