"""Bundles: export, TorchScript shards that reproduce the trained model, hash verification."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nodes.runtime import open_runtime
from testbed.bundle import BundleError, export_bundle, load_manifest, shard_for
from testbed.data import load_digits
from testbed.model import StudentsConfig, evaluate, load_or_train


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, object]:
    ds = load_digits()
    cfg = StudentsConfig(dataset="digits", input_shape=ds.input_shape, num_classes=10, students=2, width=4,
                         out_dim=4, epochs=2, batch_size=64, lr=0.01, subset=400, seed=0)
    cache = tmp_path_factory.mktemp("cache")
    model, record = load_or_train(cfg, ds, cache_dir=cache)
    assert record["cached"] is False
    again, record2 = load_or_train(cfg, ds, cache_dir=cache)
    assert record2["cached"] is True
    assert evaluate(again, ds.x_test, ds.y_test) == pytest.approx(record["test_accuracy"])
    out = export_bundle(model, cfg, out_dir=tmp_path_factory.mktemp("bundle"),
                        evaluation={"test_accuracy": record["test_accuracy"]}, classes=ds.classes)
    return out, model, ds


def test_manifest_lists_every_shard_with_shapes_and_hashes(bundle: tuple) -> None:
    out, _, _ = bundle
    m = load_manifest(out)
    assert [s["name"] for s in m["shards"]] == ["student_0", "student_1", "merge"]
    assert m["merge_rule"] == "concat" and m["part_dim"] == 4
    assert shard_for(m, role="student", index=1)["output"] == {"shape": [1, 4], "dtype": "float32"}
    assert shard_for(m, role="merge")["input"]["shape"] == [1, 8]
    assert all(len(s["sha256"]) == 64 for s in m["shards"])
    assert m["versions"]["torch"] == torch.__version__


def test_shards_on_the_board_runtime_reproduce_the_unified_model(bundle: tuple) -> None:
    out, model, ds = bundle
    m = load_manifest(out)
    x = ds.x_test[:5]
    parts = [open_runtime("torch", out / shard_for(m, role="student", index=i)["file"]).run(x) for i in range(2)]
    logits = open_runtime("torch", out / "merge.ts").run(np.concatenate(parts, axis=1))
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)


def test_tampered_or_missing_shard_is_refused(bundle: tuple, tmp_path: Path) -> None:
    out, _, _ = bundle
    import shutil
    copy = tmp_path / "b"
    shutil.copytree(out, copy)
    data = bytearray((copy / "merge.ts").read_bytes())
    data[-10] ^= 0xFF
    (copy / "merge.ts").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match the manifest"):
        load_manifest(copy)
    (copy / "merge.ts").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_manifest(copy)


def test_unknown_runtime_lists_known_names(bundle: tuple) -> None:
    out, _, _ = bundle
    from nodes.errors import RuntimeLoadError
    with pytest.raises(RuntimeLoadError, match="expected one of tflite, torch"):
        open_runtime("onnx", out / "merge.ts")
