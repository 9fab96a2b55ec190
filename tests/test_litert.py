"""LiteRT shards: litert-torch export against torch on real digits images, int8 quantisation,
and the board's tflite runtime (batches, integer I/O, bad files, a missing backend)."""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nodes.errors import RuntimeLoadError
from nodes.runtime import RUNTIMES, open_runtime
from testbed.data import load_digits
from testbed.litert import (LiteRTExportError, LiteRTParityError, export_tflite, litert_available, run_tflite,
                            tflite_accuracy)

EXPORT_SKIP = litert_available(quantize="int8")
needs_export = pytest.mark.skipif(EXPORT_SKIP is not None, reason=f"LiteRT export unavailable: {EXPORT_SKIP}")
try:
    importlib.import_module("ai_edge_litert.interpreter")
    RUNTIME_SKIP = None
except ImportError as _exc:
    RUNTIME_SKIP = f"ai-edge-litert is not importable ({_exc}); pip install ai-edge-litert"
needs_runtime = pytest.mark.skipif(RUNTIME_SKIP is not None, reason=RUNTIME_SKIP or "")


class TinyCNN(nn.Module):
    """conv + bn + relu + pool + linear: the layer kinds a student shard has."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))


@pytest.fixture(scope="module")
def trained() -> tuple[TinyCNN, object, float]:
    """A TinyCNN trained on digits for three epochs (about a second on an idle core; ~95% test accuracy)."""
    torch.manual_seed(0)
    ds = load_digits()
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    for _ in range(3):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(ds.x_test)).argmax(1).numpy() == ds.y_test).mean())
    assert acc > 0.85, acc  # the model must have learned something for the int8 comparison to mean anything
    return model, ds, acc


@pytest.fixture(scope="module")
def exported(trained: tuple, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    if EXPORT_SKIP is not None:
        pytest.skip(f"LiteRT export unavailable: {EXPORT_SKIP}")
    model, ds, _ = trained
    out = tmp_path_factory.mktemp("litert")
    example = torch.from_numpy(ds.x_train[:1])
    result = {}
    for mode in ("none", "int8", "int8-dynamic"):
        path = out / f"tiny_{mode}.tflite"
        result[mode] = path, export_tflite(model, example, path, samples=ds.x_train[:64], quantize=mode,
                                           calibration=ds.x_train[:256])
    return result


@needs_export
def test_float_export_matches_torch_on_real_images(exported: dict, trained: tuple) -> None:
    import hashlib
    path, entry = exported["none"]
    model, ds, _ = trained
    assert entry["runtime"] == "tflite" and entry["file"] == path.name and entry["quantize"] == "none"
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert entry["input"] == {"shape": [1, 1, 8, 8], "dtype": "float32"}
    assert entry["output"] == {"shape": [1, 10], "dtype": "float32"}
    assert 0 <= entry["parity_max_abs_error"] <= 1e-4
    assert entry["litert_torch"] and entry["ai_edge_litert"]
    assert "tensor_io" not in entry
    # held-out images, not the parity samples
    with torch.no_grad():
        want = model(torch.from_numpy(ds.x_test)).numpy()
    np.testing.assert_allclose(run_tflite(path, ds.x_test), want, atol=1e-4)


@needs_export
def test_int8_is_smaller_full_integer_and_keeps_accuracy(exported: dict, trained: tuple) -> None:
    (f32_path, _), (q_path, entry) = exported["none"], exported["int8"]
    _, ds, torch_acc = trained
    assert entry["quantize"] == "int8" and entry["scheme"] == "int8-static"
    assert entry["bytes"] == q_path.stat().st_size < f32_path.stat().st_size
    assert entry["tensor_io"]["input"]["dtype"] == "int8" and entry["tensor_io"]["output"]["dtype"] == "int8"
    assert entry["input"]["dtype"] == "float32"  # the runtime (de)quantises: boards still feed float32
    assert entry["parity_max_abs_error"] > 0  # quantised, so not bit-identical
    acc = tflite_accuracy(q_path, ds.x_test, ds.y_test)
    assert acc >= torch_acc - 0.03, (acc, torch_acc)
    # dynamic range: int8 weights, float32 tensors at the boundary, same accuracy budget
    d_path, d_entry = exported["int8-dynamic"]
    assert d_entry["scheme"] == "int8-dynamic-range" and "tensor_io" not in d_entry
    assert d_entry["bytes"] < f32_path.stat().st_size
    assert tflite_accuracy(d_path, ds.x_test, ds.y_test) >= torch_acc - 0.03


@needs_export
def test_parity_check_fails_loudly_and_removes_the_file(trained: tuple, tmp_path: Path) -> None:
    model, ds, _ = trained
    path = tmp_path / "strict.tflite"
    with pytest.raises(LiteRTParityError,
                       match=r"strict\.tflite: LiteRT \(int8-static\) output differs .* expected <= 0.0001"):
        export_tflite(model, torch.from_numpy(ds.x_train[:1]), path, samples=ds.x_train[:64], quantize="int8",
                      tolerance=1e-4)
    assert not path.exists()


def test_export_refuses_bad_options(trained: tuple, tmp_path: Path) -> None:
    model, ds, _ = trained
    with pytest.raises(LiteRTExportError, match="unknown quantize mode 'int4'; expected one of none, int8"):
        export_tflite(model, torch.from_numpy(ds.x_train[:1]), tmp_path / "m.tflite", samples=ds.x_train[:4],
                      quantize="int4")
    if EXPORT_SKIP is None:
        with pytest.raises(LiteRTExportError, match=r"samples have shape \[4, 64\]; expected \[N>=1, 1, 8, 8\]"):
            export_tflite(model, torch.from_numpy(ds.x_train[:1]), tmp_path / "m.tflite",
                          samples=ds.x_train[:4].reshape(4, 64))


@needs_export
def test_runtime_runs_any_batch_size(exported: dict, trained: tuple) -> None:
    model, ds, _ = trained
    x = ds.x_test[:37]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    for mode, atol in (("none", 1e-4), ("int8", 0.5)):
        with open_runtime("tflite", exported[mode][0], threads=2) as rt:
            assert rt.input_shape == (1, 1, 8, 8)
            got = rt.run(x)
            assert got.shape == (37, 10) and got.dtype == np.float32
            np.testing.assert_allclose(got, want, atol=atol)
            np.testing.assert_array_equal(rt.run(x[:1]), got[:1])
            assert rt.run(x[:0]).shape == (0, 10)
            with pytest.raises(ValueError, match=r"expects input shape \[N, 1, 8, 8\], got \[2, 64\]"):
                rt.run(x[:2].reshape(2, 64))


@needs_runtime
def test_bad_or_missing_file_is_a_runtime_load_error(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.tflite"
    bad.write_bytes(b"this is not a flatbuffer" * 10)
    with pytest.raises(RuntimeLoadError, match=r"garbage\.tflite: cannot load LiteRT shard"):
        open_runtime("tflite", bad)
    with pytest.raises(RuntimeLoadError, match=r"absent\.tflite: no such LiteRT shard file"):
        open_runtime("tflite", tmp_path / "absent.tflite")


@needs_export
def test_falls_back_to_tflite_runtime(exported: dict, trained: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    # a board with only the legacy tflite-runtime package: same Interpreter API, other module name
    real = importlib.import_module("ai_edge_litert.interpreter").Interpreter
    legacy, legacy_interpreter = types.ModuleType("tflite_runtime"), types.ModuleType("tflite_runtime.interpreter")
    legacy_interpreter.Interpreter = real
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", legacy)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", legacy_interpreter)
    _, ds, _ = trained
    with open_runtime("tflite", exported["int8"][0]) as rt:
        assert rt.run(ds.x_test[:3]).shape == (3, 10)


def test_missing_backend_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime", "tflite_runtime.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)  # a None entry makes `import name` raise ImportError
    assert "tflite" in RUNTIMES.names()
    with pytest.raises(RuntimeLoadError,
                       match=r"runtime 'tflite' needs LiteRT on this board: pip install ai-edge-litert"):
        open_runtime("tflite", tmp_path / "any.tflite")
