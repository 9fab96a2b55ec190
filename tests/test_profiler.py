"""The packet profiler: the split-inference paper's reference sizes and the CLI's JSON."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import last_json, run_cli
from linkemu.profile import PRESETS
from testbed.profiler import parse_shape, profile_model
from testbed.zoo import ZOO, build


def _row(rows: list, name: str):  # noqa: ANN202
    return next(r for r in rows if r.name == name)


def test_vgg16_pool5_is_7x7x512_100352_bytes() -> None:
    rows = profile_model("vgg16")
    pool5 = _row(rows, "features.30")
    assert pool5.kind == "MaxPool2d" and pool5.shape == [512, 7, 7]
    assert pool5.values == 25_088 and pool5.bytes_f32 == 100_352
    assert pool5.bytes_f16 == 50_176 and pool5.bytes_int8 == 25_088
    assert pool5.airtime_s["hbc-1312k"] == pytest.approx(PRESETS["hbc-1312k"].airtime_s(100_352), abs=1e-6)
    assert rows[0].name == "input" and rows[0].values == 3 * 224 * 224


def test_reference_shapes_of_the_other_models() -> None:
    assert _row(profile_model("alexnet"), "features.12").shape == [256, 6, 6]          # pool5: 9,216 values
    assert _row(profile_model("resnet18"), "layer4.1").shape == [512, 7, 7]
    r50 = profile_model("resnet50")
    assert _row(r50, "layer4.2").shape == [2048, 7, 7] and _row(r50, "layer1.0").shape == [256, 56, 56]
    assert r50[-1].shape == [1000]


def test_parameter_counts_match_the_reference_architectures() -> None:
    counts = {n: sum(p.numel() for p in build(n).parameters()) for n in ZOO}
    assert counts == {"alexnet": 61_100_840, "vgg16": 138_357_544, "resnet18": 11_689_512,
                      "resnet50": 25_557_032}


def test_8k_input_is_computed_on_the_meta_device() -> None:
    rows = profile_model("vgg16", input_shape=(3, 4320, 7680))
    pool5 = _row(rows, "features.30")
    assert pool5.shape == [512, 135, 240] and pool5.bytes_f32 == 512 * 135 * 240 * 4
    assert _row(rows, "avgpool").shape == [512, 7, 7]           # the classifier input does not grow


def test_real_input_adds_compressed_sizes_smaller_after_relu() -> None:
    x = np.random.default_rng(0).normal(size=(3, 64, 64)).astype(np.float32)
    rows = profile_model("alexnet", input_shape=(3, 64, 64), real_input=x)
    conv, relu = _row(rows, "features.0"), _row(rows, "features.1")
    assert conv.zstd_f32 is not None and relu.zstd_f32 is not None
    assert relu.zstd_f32 < conv.zstd_f32 <= conv.bytes_f32 + 64    # zeros after ReLU compress
    assert relu.zstd_int8 < relu.zstd_f32


def test_parse_shape_errors_say_what_was_expected() -> None:
    assert parse_shape("3x224x224") == (3, 224, 224)
    for bad in ("224x224", "3x0x5", "axbxc"):
        with pytest.raises(ValueError, match="expected"):
            parse_shape(bad)


def test_cli_profile_json(tmp_path: Path) -> None:
    proc = run_cli("profile", "vgg16", "--no-real", "--json", cache=tmp_path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = last_json(proc.stdout)
    pool5 = next(layer for layer in doc["layers"] if layer["name"] == "features.30")
    assert (pool5["shape"], pool5["values"], pool5["bytes_f32"]) == ([512, 7, 7], 25_088, 100_352)
    bad = run_cli("profile", "lenet", cache=tmp_path, cwd=tmp_path)
    assert bad.returncode == 2 and "expected one of alexnet" in bad.stderr
