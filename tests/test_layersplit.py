"""The layer split: cut enumeration, exact head/tail composition, the planner's choices, and the bundle."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from linkemu.profile import PRESETS, LinkProfile
from nodes.codec import HEADER_SIZE, TRAILER_SIZE, Encoding, encode_frame
from nodes.merge import Merger
from testbed.bundle import BundleError, load_manifest, shard_for
from testbed.partition.layersplit import (DEFAULT_POWER, DEFAULT_SCALE, ExportParityError, LayerCost,
                                          LayerSplitError, SplitPlan, export_layer_bundle, frame_bytes, layer_shapes,
                                          measure_layers, model_layers, plan_split, split_modules)
from testbed.partition.teacher import Teacher, TeacherConfig
from testbed.zoo import build


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                         nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(), nn.Linear(32, 10)).eval()


def _teacher() -> Teacher:
    torch.manual_seed(0)
    cfg = TeacherConfig(dataset="digits", input_shape=(1, 8, 8), num_classes=10, widths=(4, 8, 8))
    model = Teacher(cfg, mean=0.3, std=0.2).eval()
    for m in model.modules():      # non-trivial BN statistics, so a misplaced BN would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


def _every_cut_composes(model: nn.Module, shape: tuple[int, ...]) -> int:
    x = torch.randn((3, *shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x.clone())
        n = len(model_layers(model))
        for cut in range(n + 1):
            head, tail = split_modules(model, cut, input_shape=shape)
            z = head(x.clone())
            assert z.ndim == 2 and z.shape[0] == 3, (cut, z.shape)     # flat, as the merge receives it
            torch.testing.assert_close(tail(z), want, rtol=0, atol=1e-5, msg=f"cut {cut}")
    return n


def test_head_then_tail_is_the_model_at_every_cut_of_a_sequential_cnn() -> None:
    assert _every_cut_composes(_cnn(), (1, 8, 8)) == 10       # nested Sequential expanded


def test_residual_models_split_only_at_block_boundaries() -> None:
    teacher = _teacher()
    names = [n for n, _ in model_layers(teacher)]
    assert names == ["normalize", "stem", "stages.0", "stages.1", "stages.2", "bn", "relu", "avgpool", "fc"]
    _every_cut_composes(teacher, (1, 8, 8))
    torch.manual_seed(0)
    resnet = build("resnet18").eval()
    names = [n for n, _ in model_layers(resnet)]
    assert "layer2.0" in names and "layer4.1" in names and not any("conv2" in n for n in names)
    _every_cut_composes(resnet, (3, 32, 32))


def test_cuts_by_name_and_refusals() -> None:
    model = _cnn()
    head, tail = split_modules(model, "2", input_shape=(1, 8, 8))
    assert head.names == ["0", "1", "2"] and tail.in_shape == (4, 4, 4)
    head, tail = split_modules(model, "input", input_shape=(1, 8, 8))
    assert head.names == [] and tail.in_shape == (1, 8, 8)
    with pytest.raises(LayerSplitError, match="unknown cut"):
        split_modules(model, "nope", input_shape=(1, 8, 8))
    with pytest.raises(LayerSplitError, match="expected 0"):
        split_modules(model, 11, input_shape=(1, 8, 8))
    with pytest.raises(LayerSplitError, match="split_layers"):
        model_layers(nn.Linear(2, 2))


def test_vgg16_candidates_include_pool5_with_25088_values() -> None:
    with torch.device("meta"):
        vgg = build("vgg16")
    rows = layer_shapes(vgg, (3, 224, 224))
    pool5 = next(r for r in rows if r.name == "features.30")
    assert pool5.kind == "MaxPool2d" and pool5.shape == (512, 7, 7) and pool5.values == 25_088
    assert pool5.frame_bytes["f32"] == HEADER_SIZE + 4 * 25_088 + TRAILER_SIZE
    assert rows[0].name == "input" and rows[0].values == 3 * 224 * 224 and rows[-1].values == 1000
    assert all(r.host_ms is None for r in rows)
    with torch.device("meta"):
        alex = build("alexnet")
    assert next(r for r in layer_shapes(alex, (3, 224, 224)) if r.name == "features.12").values == 9_216


@pytest.mark.parametrize("encoding", ["f32", "f16", "int8"])
def test_frame_bytes_are_what_the_encoder_writes(encoding: str) -> None:
    enc = {"f32": Encoding.F32, "f16": Encoding.F16, "int8": Encoding.INT8_AFFINE}[encoding]
    for n in (1, 10, 4097):
        a = np.linspace(-1, 1, n, dtype=np.float32)
        assert frame_bytes(n, encoding) == len(encode_frame(a, run_id=1, sample_id=2, shard=0, seq=3,
                                                            send_ts_ns=4, encoding=enc))
    with pytest.raises(LayerSplitError, match="unknown encoding"):
        frame_bytes(3, "f8")


def test_measure_layers_times_every_layer_and_checks_the_sequence() -> None:
    model = _cnn()
    rows = measure_layers(model, (1, 8, 8), repeats=3, warmup=1)
    assert [r.index for r in rows] == list(range(11)) and rows[0].host_ms == 0.0
    assert all(r.host_ms is not None and r.host_ms >= 0 for r in rows)
    assert rows[3].shape == (4, 4, 4) and rows[-1].shape == (10,)

    class Wrong(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def split_layers(self) -> list[tuple[str, nn.Module]]:
            return [("b", self.b), ("a", self.a)]        # wrong order

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x))

    with pytest.raises(LayerSplitError, match="differ from the model"):
        measure_layers(Wrong(), (4,), repeats=1, warmup=0)


# A synthetic model: input 3000 values; layer a grows to 6000, b shrinks to 500, c ends in 10.
def _costs() -> list[LayerCost]:
    return [LayerCost.of(0, "input", (3000,), 0.0), LayerCost.of(1, "a", (6000,), 1.0),
            LayerCost.of(2, "b", (500,), 1.0), LayerCost.of(3, "c", (10,), 40.0)]


def _hbc164_airtime_ms(nbytes: int) -> float:
    """By hand: 802.15.6 HBC PSDUs of at most 255 octets carry 9 of MAC header + FCS; each costs
    2048 chips at 42 Mchip/s plus a 48-bit PHY header at the PSDU rate of 164.0625 kbit/s."""
    rate = 164_062.5
    psdus = math.ceil(nbytes / (255 - 9))
    return 1000 * (psdus * (2048 / 42e6 + 48 / rate) + (nbytes + 9 * psdus) * 8 / rate)


def test_planner_picks_all_on_edge_on_a_fast_link_and_a_small_activation_on_a_slow_one() -> None:
    scale = {"rpi4": 5.0, "jetson-nano": 1.0}
    fast = plan_split(_costs(), link="ideal", wearable_kind="rpi4", edge_kind="jetson-nano", scale=scale)
    assert [r.total_ms for r in fast.rows] == pytest.approx([42.0, 5 + 41, 10 + 40, 5 * 42])
    assert fast.chosen == 0
    slow = plan_split(_costs(), link="hbc-164k", wearable_kind="rpi4", edge_kind="jetson-nano", scale=scale)
    f32 = [HEADER_SIZE + 4 * v + TRAILER_SIZE for v in (3000, 6000, 500, 10)]
    want = [0 + _hbc164_airtime_ms(f32[0]) + 42, 5 + _hbc164_airtime_ms(f32[1]) + 41,
            10 + _hbc164_airtime_ms(f32[2]) + 40, 210 + _hbc164_airtime_ms(f32[3]) + 0]
    assert [r.total_ms for r in slow.rows] == pytest.approx(want, rel=1e-9)
    assert [r.bytes for r in slow.rows] == f32
    assert slow.chosen == 2 == int(np.argmin(want))     # b: 500 values, ~165 ms vs ~655 ms all on edge
    assert slow.choice.layer == "b" and slow.table()[2]["chosen"] and not slow.table()[0]["chosen"]
    text = slow.render()
    assert "* " in text and "after b" in text and "runner-up" in text and "hbc-164k" in text
    assert len(text.splitlines()) == 2 + 4 + 1
    # f16 halves the payload: the raw input becomes cheaper to send, the choice is still b
    assert plan_split(_costs(), link="hbc-164k", wearable_kind="rpi4", edge_kind="jetson-nano", scale=scale,
                      encoding="f16").rows[0].bytes == HEADER_SIZE + 2 * 3000 + TRAILER_SIZE


def test_energy_objective_can_choose_differently_from_latency() -> None:
    kw = dict(link="hbc-164k", wearable_kind="rpi4", edge_kind="jetson-nano", scale={"rpi4": 5.0, "jetson-nano": 1.0})
    latency = plan_split(_costs(), **kw)
    energy = plan_split(_costs(), objective="energy", **kw)
    assert latency.chosen == 2
    # on the wearable, 10 ms of compute at 5 W (50 mJ) outweighs ~0.65 s of HBC radio at 10 mW (6.5 mJ)
    assert energy.chosen == 0
    c0 = energy.rows[0]
    assert c0.compute_mj == 0 and c0.radio_mj == pytest.approx(_hbc164_airtime_ms(c0.bytes) * DEFAULT_POWER["hbc"])
    assert energy.rows[2].compute_mj == pytest.approx(10 * DEFAULT_POWER["rpi4"])
    assert "mJ" in energy.reason()
    # a power-hungry radio moves the energy choice to the small activation
    assert plan_split(_costs(), objective="energy", power={"hbc": 1.0}, **kw).chosen == 2
    # resolved values (as a bundle's key records them) take precedence over the table
    hungry = plan_split(_costs(), objective="energy", power={"hbc": 0.0}, radio_power_w=1.0, **kw)
    assert hungry.chosen == 2 and hungry.radio_power_w == 1.0
    cheap = plan_split(_costs(), objective="energy", wearable_power_w=0.0, radio_power_w=1.0, **kw)
    assert cheap.rows[2].compute_mj == 0 and cheap.wearable_power_w == 0.0


def test_scale_factors_and_their_overrides() -> None:
    assert set(DEFAULT_SCALE) >= {"sim", "rpi3", "rpi4", "rpi5", "rpi-zero2w", "jetson-nano",
                                  "jetson-orin-nano", "jetson-xavier-nx"}
    plan = plan_split(_costs(), link="ideal", wearable_kind="rpi-zero2w", edge_kind="jetson-orin-nano")
    assert plan.rows[2].wearable_ms == pytest.approx(2.0 * DEFAULT_SCALE["rpi-zero2w"])
    assert plan.rows[2].edge_ms == pytest.approx(40.0 * DEFAULT_SCALE["jetson-orin-nano"])
    plan = plan_split(_costs(), link="ideal", wearable_kind="rpi-zero2w", edge_kind="jetson-orin-nano",
                      scale={"rpi-zero2w": 2.0})
    assert plan.rows[2].wearable_ms == pytest.approx(4.0) and plan.wearable_scale == 2.0
    assert plan_split(_costs(), link="ideal", wearable_kind="sim", edge_kind="sim").rows[1].total_ms == 42.0
    with pytest.raises(LayerSplitError, match="no scale factor for 'pi9'"):
        plan_split(_costs(), link="ideal", wearable_kind="pi9", edge_kind="sim")
    with pytest.raises(LayerSplitError, match="no radio power for 'lora'"):
        plan_split(_costs(), link=LinkProfile("lora-sf7", 5470.0), wearable_kind="sim", edge_kind="sim")
    with pytest.raises(LayerSplitError, match="unknown link"):
        plan_split(_costs(), link="hbc-1m", wearable_kind="sim", edge_kind="sim")
    with pytest.raises(LayerSplitError, match="objective"):
        plan_split(_costs(), link="ideal", wearable_kind="sim", edge_kind="sim", objective="speed")
    with pytest.raises(LayerSplitError, match="measure_layers"):
        plan_split([LayerCost.of(0, "input", (3,), None)], link="ideal", wearable_kind="sim", edge_kind="sim")
    # a link's fixed delay counts once, whatever the cut
    delayed = plan_split(_costs(), link=PRESETS["ideal"].replace(name="slow-wire", delay_s=0.5),
                         wearable_kind="sim", edge_kind="sim", power={"slow": 0.0})
    assert [r.link_ms for r in delayed.rows] == pytest.approx([500.0] * 4)


def test_exported_bundle_verifies_runs_through_the_merge_and_refuses_tampering(tmp_path: Path) -> None:
    model = _cnn()
    samples = np.random.default_rng(0).normal(size=(20, 1, 8, 8)).astype(np.float32)
    costs = measure_layers(model, (1, 8, 8), repeats=2, warmup=0)
    plan = plan_split(costs, link="hbc-164k", wearable_kind="rpi4", edge_kind="jetson-nano")
    out = tmp_path / "bundle"
    manifest = export_layer_bundle(model, plan, out_dir=out, samples=samples, classes=[str(i) for i in range(10)],
                                   evaluation={"test_accuracy": None}, extra_manifest={"dataset": "synthetic"})
    loaded = load_manifest(out)
    assert loaded == manifest
    n = plan.choice.values
    assert loaded["method"] == "layer" and loaded["part_dim"] == n and loaded["merge_rule"] == "concat"
    assert loaded["students"] == loaded["parts"] == loaded["S"] == loaded["M"] == 1 and loaded["student_part"] == [0]
    assert loaded["cut"]["index"] == plan.chosen and loaded["cut"]["objective"] == "latency"
    assert len(loaded["plan"]) == len(costs) and loaded["dataset"] == "synthetic"
    assert loaded["evaluation"]["parity_max_abs_error"] <= 1e-4 and loaded["config_key"]
    assert SplitPlan.from_manifest(loaded).render() == plan.render()
    student, merge = shard_for(loaded, role="student", index=0), shard_for(loaded, role="merge")
    assert student["part"] == 0 and student["output"]["shape"] == [1, n] and merge["input"]["shape"] == [1, n]
    # what the agents do: the wearable runs the student shard, the edge merges one part and runs the merge shard
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        head, tail = torch.jit.load(str(out / student["file"])), torch.jit.load(str(out / merge["file"]))
    merger = Merger(parts=[0], part_dim=n, deadline_s=1.0, rule="concat", student_part=[0])
    x = torch.from_numpy(samples[:1])
    with torch.no_grad():
        vec = head(x).numpy()[0]
        merged = merger.add(7, 0, vec, now=0.0)
        assert merged is not None and np.array_equal(merged.inputs[0], vec)
        got = tail(torch.from_numpy(merged.inputs)).numpy()
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-5)

    with open(out / "merge.ts", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="sha256"):
        load_manifest(out)
    with pytest.raises(LayerSplitError, match="may not set"):
        export_layer_bundle(model, 3, out_dir=tmp_path / "b2", samples=samples, classes=[], extra_manifest={"cut": 1})
    with pytest.raises(LayerSplitError, match="another model"):
        export_layer_bundle(_teacher(), plan, out_dir=tmp_path / "b3", samples=samples, classes=[])


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_export_refuses_a_trace_that_does_not_reproduce_the_model(tmp_path: Path) -> None:
    class SignFlip(nn.Module):                 # data-dependent branch: tracing bakes in one side
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if float(x.sum()) > 0 else -x

    model = nn.Sequential(nn.Flatten(), SignFlip(), nn.Linear(4, 2)).eval()
    samples = np.stack([np.ones((1, 2, 2)), -np.ones((1, 2, 2))]).astype(np.float32)
    with pytest.raises(ExportParityError, match="expected <="):
        export_layer_bundle(model, 2, out_dir=tmp_path, samples=samples, classes=["a", "b"])
    assert not (tmp_path / "manifest.json").exists()


def test_an_experiments_layer_section_builds_a_bundle(tmp_path: Path) -> None:
    from conftest import DEMO_INVENTORY
    from testbed.config import load_experiment, load_inventory
    from testbed.data import load_dataset
    from testbed.partition.build import partition_config
    from testbed.partition.layersplit import build_layer_bundle, resolve_layer_inputs

    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text("""\
name: layer
seed: 0
dataset: {name: digits}
partition:
  method: layer
  teacher: {widths: [4, 8, 8], epochs: 1}
  layer: {objective: latency, repeats: 2}
assignment: {wrist: 0, edge: merge}
run: {samples: 5, rate_hz: 5, deadline_ms: 500, timeout_ms: 2000}
""")
    exp, inv = load_experiment(exp_file), load_inventory(DEMO_INVENTORY)
    inputs = resolve_layer_inputs(exp, inv)
    assert inputs["wearable_kind"] == inputs["edge_kind"] == "sim" and inputs["link"]["name"] == "hbc-1312k"
    assert resolve_layer_inputs(exp, None)["wearable_kind"] == "rpi4"
    data = load_dataset("digits", seed=0)
    cfg = partition_config(exp.partition, dataset="digits", dataset_path=None, seed=0)
    manifest, modules = build_layer_bundle(exp, cfg, data, inventory=inv, out_dir=tmp_path / "b",
                                           cache_dir=tmp_path / "cache")
    assert load_manifest(tmp_path / "b") == manifest and manifest["method"] == "layer"
    assert manifest["cut"]["link"] == "hbc-1312k" and set(modules) == {"student_0", "merge"}
    x = torch.from_numpy(data.x_test[:4])
    with torch.no_grad():
        assert modules["student_0"](x).shape == (4, manifest["part_dim"])


def test_a_boards_compute_scale_in_the_inventory_overrides_its_kind(tmp_path: Path) -> None:
    from testbed.config import load_experiment, load_inventory
    from testbed.partition.layersplit import resolve_layer_inputs

    (tmp_path / "inv.yaml").write_text("""\
bench: t
boards:
  wrist: {role: wearable, kind: rpi4, connect: local, runtime: torch, compute_scale: 9.5}
  edge: {role: edge, kind: jetson-nano, connect: local, runtime: torch}
links:
  - {name: wrist-edge, from: wrist, to: edge, transport: {type: mqtt}, profile: hbc-164k}
""")
    (tmp_path / "exp.yaml").write_text("""\
name: layer
dataset: {name: digits}
partition: {method: layer}
assignment: {wrist: 0, edge: merge}
run: {samples: 5, rate_hz: 5, deadline_ms: 500, timeout_ms: 2000}
""")
    inputs = resolve_layer_inputs(load_experiment(tmp_path / "exp.yaml"), load_inventory(tmp_path / "inv.yaml"))
    assert inputs["scale"] == {"wearable": 9.5, "edge": DEFAULT_SCALE["jetson-nano"]}
    costs = [LayerCost.of(0, "input", (1, 8, 8), 0.0), LayerCost.of(1, "a", (4,), 2.0)]
    plan = plan_split(costs, link="hbc-164k", wearable_kind="rpi4", edge_kind="jetson-nano",
                      wearable_scale=inputs["scale"]["wearable"], edge_scale=inputs["scale"]["edge"])
    assert plan.rows[1].wearable_ms == pytest.approx(2.0 * 9.5)
    assert plan.rows[0].edge_ms == pytest.approx(2.0 * DEFAULT_SCALE["jetson-nano"])
