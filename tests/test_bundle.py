"""Bundles: export, TorchScript shards that reproduce the trained model, hash verification; the
torch runtime leaves the process's thread pool to the process."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nodes.runtime import configure_torch_threads, open_runtime
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


def test_a_torch_runtime_leaves_the_process_thread_count_alone(bundle: tuple) -> None:
    out, _, _ = bundle
    before = torch.get_num_threads()
    mine = 3 if before != 3 else 2   # never 1, the count the runtime used to impose
    try:
        torch.set_num_threads(mine)
        with open_runtime("torch", out / "merge.ts") as rt:
            rt.run(np.zeros((1, 8), dtype=np.float32))
        assert torch.get_num_threads() == mine
        with pytest.raises(TypeError, match="threads"):   # no per-runtime count to pretend to honour
            open_runtime("torch", out / "merge.ts", threads=2)
    finally:
        torch.set_num_threads(before)


def test_configure_torch_threads_sizes_the_process_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from nodes.errors import RuntimeLoadError
    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            configure_torch_threads(n)
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="torch threads must be an int >= 1"):
            configure_torch_threads(bad)  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "torch", None)   # a board without torch
    with pytest.raises(RuntimeLoadError, match="needs PyTorch"):
        configure_torch_threads(1)
    assert torch.get_num_threads() == before
