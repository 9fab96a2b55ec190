"""LiteRT (.tflite) shard export on the laptop, for boards whose runtime is ``tflite``.

Holds ``export_tflite`` (convert a torch module with litert-torch, optionally post-training
quantise it to int8 with ai-edge-quantizer calibrated on real samples, write the file, reload
it with the board's own ``nodes.runtime`` tflite backend and check it against the torch module),
``run_tflite`` / ``tflite_accuracy`` for callers that measure a quantised shard by accuracy,
and ``litert_available`` so callers and tests can skip with a stated reason.

litert-torch, ai-edge-quantizer and ai-edge-litert come with the ``[litert]`` extra and are
imported lazily: importing this module needs neither. It must not be imported by ``nodes``.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nodes.errors import RuntimeLoadError
from nodes.runtime import TFLiteRuntime
from testbed.config import QUANTIZE as QUANTIZE_MODES  # one list: the modes the experiment file accepts
from testbed.errors import TestbedError

SCHEMES = {
    "none": "float32",
    # full integer: int8 weights and activations (calibrated), int8 input/output tensors that the
    # tflite runtime quantises/dequantises with their scale and zero point
    "int8": "int8-static",
    # dynamic range: int8 weights, float32 activations quantised on the fly, float32 I/O
    "int8-dynamic": "int8-dynamic-range",
}
FLOAT_TOLERANCE = 1e-4
_INSTALL_HINT = "pip install 'hbc-testbed[litert]'"


class LiteRTExportError(TestbedError):
    """A module could not be converted to, quantised to, or written as a LiteRT shard."""


class LiteRTParityError(LiteRTExportError):
    """A written LiteRT shard's outputs differ from the torch module's past the tolerance."""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def litert_available(*, quantize: str = "none") -> str | None:
    """None when ``export_tflite(..., quantize=quantize)`` can run here, else the reason why not."""
    needed = [("litert_torch", "litert-torch"), ("ai_edge_litert.interpreter", "ai-edge-litert")]
    if quantize != "none":
        needed.append(("ai_edge_quantizer", "ai-edge-quantizer"))
    for module, dist in needed:
        try:
            importlib.import_module(module)
        except Exception as exc:  # ImportError, or a broken install raising something else
            return f"{dist} is not importable ({type(exc).__name__}: {exc}); {_INSTALL_HINT}"
    return None


def litert_versions() -> dict[str, str | None]:
    """Installed versions of the LiteRT export stack (None where a package is absent)."""
    return {"litert_torch": _version("litert-torch"), "ai_edge_litert": _version("ai-edge-litert"),
            "ai_edge_quantizer": _version("ai-edge-quantizer")}


@contextlib.contextmanager
def _quiet_converter() -> Iterator[None]:
    """litert-torch prints a progress tree and warns a lot; keep it off the user's terminal."""
    old = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if old is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = old


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _convert(module: torch.nn.Module, example: torch.Tensor, *, name: str) -> bytes:
    import litert_torch
    try:
        with _quiet_converter(), torch.no_grad():
            return bytes(litert_torch.convert(module, (example,)).model_content())
    except Exception as exc:  # torch.export and the MLIR lowering raise many kinds
        raise LiteRTExportError(f"{name}: litert-torch could not convert the module ({_one_line(exc)}); "
                                f"expected a module torch.export can trace with a fixed input shape") from exc


def _quantize(flat: bytes, *, mode: str, calibration: np.ndarray, name: str) -> bytes:
    from ai_edge_quantizer import calibrator, quantizer, recipe, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils
    rcp = recipe.static_wi8_ai8() if mode == "int8" else recipe.dynamic_wi8_afp32()
    try:
        with _quiet_converter(), open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            q = quantizer.Quantizer(flat, rcp)
            qsv = None
            if q.need_calibration:
                (sig, (in_name,)), = _signature_inputs(flat).items()
                # Quantizer.calibrate keeps a per-sample moving average of min/max, which clips the
                # extremes (max abs logit error ~50% on a digits CNN); true min/max over the real
                # calibration samples bounds the error to a few quantisation steps.
                manager = recipe_manager.RecipeManager()
                manager.load_quantization_recipe(rcp)
                calib = calibrator.Calibrator(flat, num_threads=1, qsv_update_func=qsv_utils.min_max_update)
                calib.calibrate({sig: [{in_name: calibration[i:i + 1]} for i in range(len(calibration))]}, manager)
                qsv = calib.get_model_qsvs()
            return bytes(q.quantize(qsv, enable_progress_report=False).quantized_model)
    except Exception as exc:
        raise LiteRTExportError(f"{name}: ai-edge-quantizer could not quantise the shard to {mode} "
                                f"({_one_line(exc)})" + ("; try quantize='int8-dynamic'" if mode == "int8" else "")
                                ) from exc


def _signature_inputs(flat: bytes) -> dict[str, list[str]]:
    from ai_edge_litert.interpreter import Interpreter
    sigs = Interpreter(model_content=flat).get_signature_list()
    if len(sigs) != 1 or len(next(iter(sigs.values()))["inputs"]) != 1:
        raise ValueError(f"expected one signature with one input, got {sigs}")
    return {k: v["inputs"] for k, v in sigs.items()}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _as_tensor(example: torch.Tensor | np.ndarray) -> torch.Tensor:
    return example if isinstance(example, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(example))


def export_tflite(module: torch.nn.Module, example: torch.Tensor | np.ndarray, path: Path, *,
                  samples: np.ndarray, tolerance: float | None = None, quantize: str = "none",
                  calibration: np.ndarray | None = None, threads: int = 1) -> dict[str, Any]:
    """Convert ``module`` to a LiteRT shard at ``path`` and check it on real ``samples``.

    ``example`` fixes the input shape (batch 1, as every shard is exported). ``quantize``:
    ``none`` (float32), ``int8`` (full-integer post-training quantisation: int8 weights and
    activations calibrated on ``calibration``, default ``samples``) or ``int8-dynamic`` (int8
    weights, float32 activations). The written file is reloaded with the board's tflite runtime
    and run on ``samples``; the max abs error against the torch module is recorded and, past
    ``tolerance``, a LiteRTParityError is raised and the file removed. ``tolerance`` None means
    1e-4 for float shards and no bound for int8 ones (measure those by accuracy with
    ``tflite_accuracy``). Returns the shard's manifest entry.
    """
    if quantize not in QUANTIZE_MODES:
        raise LiteRTExportError(f"unknown quantize mode {quantize!r}; expected one of {', '.join(QUANTIZE_MODES)}")
    if (reason := litert_available(quantize=quantize)) is not None:
        raise LiteRTExportError(f"LiteRT export is not available: {reason}")
    path = Path(path)
    name = path.name
    example = _as_tensor(example).to(torch.float32)
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if samples.ndim != example.ndim or samples.shape[1:] != tuple(example.shape[1:]) or not len(samples):
        raise LiteRTExportError(f"{name}: samples have shape {list(samples.shape)}; expected "
                                f"[N>=1, {', '.join(map(str, example.shape[1:]))}] like the example input")
    if tolerance is None:
        tolerance = FLOAT_TOLERANCE if quantize == "none" else float("inf")
    module = module.eval()
    with torch.no_grad():  # the reference first, so nothing the converter does to the module matters
        want = module(torch.from_numpy(samples)).numpy().astype(np.float32)

    t0 = time.perf_counter()
    flat = _convert(module, example[:1], name=name)
    convert_s = time.perf_counter() - t0
    data = flat
    if quantize != "none":
        cal = samples if calibration is None else np.ascontiguousarray(calibration, dtype=np.float32)
        data = _quantize(flat, mode=quantize, calibration=cal, name=name)
    quantize_s = time.perf_counter() - t0 - convert_s

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    try:
        got, io = _run_and_describe(path, samples, threads=threads)
        err = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
        if got.shape != want.shape or not err <= tolerance:
            raise LiteRTParityError(
                f"{name}: LiteRT ({SCHEMES[quantize]}) output differs from the torch module by {err:.3g} on "
                f"{len(samples)} samples (shape {list(got.shape)} vs {list(want.shape)}); expected <= {tolerance:g}")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    scale = float(np.max(np.abs(want))) or 1.0
    versions = litert_versions()
    entry: dict[str, Any] = {
        "runtime": "tflite", "file": name, "sha256": _sha256(data), "bytes": len(data),
        "float_bytes": len(flat),
        "input": {"shape": [1, *example.shape[1:]], "dtype": "float32"},
        "output": {"shape": [1, *want.shape[1:]], "dtype": "float32"},
        "quantize": quantize, "scheme": SCHEMES[quantize],
        "parity_max_abs_error": err, "parity_rel_error": err / scale, "parity_samples": len(samples),
        "convert_seconds": round(convert_s, 3), "quantize_seconds": round(quantize_s, 3),
        "litert_torch": versions["litert_torch"], "ai_edge_litert": versions["ai_edge_litert"],
    }
    if quantize != "none":
        entry["ai_edge_quantizer"] = versions["ai_edge_quantizer"]
        entry["calibration_samples"] = len(samples if calibration is None else calibration)
    if io:
        entry["tensor_io"] = io  # integer I/O tensors: the board's runtime (de)quantises with these
    return entry


def _run_and_describe(path: Path, x: np.ndarray, *, threads: int) -> tuple[np.ndarray, dict[str, Any]]:
    try:
        with TFLiteRuntime(path, threads=threads) as rt:
            return rt.run(x), rt.tensor_io
    except RuntimeLoadError as exc:
        raise LiteRTExportError(f"{path.name}: the written shard does not load in the tflite runtime ({exc})") from exc


def run_tflite(path: Path, x: np.ndarray, *, threads: int = 1) -> np.ndarray:
    """Run a LiteRT shard on a batch ``x`` (any N) with the board's tflite runtime; float32 out."""
    with TFLiteRuntime(Path(path), threads=threads) as rt:
        return rt.run(x)


def tflite_accuracy(path: Path, x: np.ndarray, y: np.ndarray, *,
                    head: Callable[[np.ndarray], np.ndarray] | None = None, threads: int = 1) -> float:
    """Top-1 accuracy of a LiteRT shard on ``x``/``y``; ``head`` maps the shard's output to
    logits when the shard is not the whole classifier (e.g. a student followed by the merge)."""
    out = run_tflite(path, x, threads=threads)
    logits = head(out) if head is not None else out
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(y)))
