"""Partition pipeline end to end on digits: teacher, NoNN and resilient students, bundles, evaluation."""
from __future__ import annotations

import contextlib
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from nodes.merge import Merger
from nodes.runtime import open_runtime
from testbed.bundle import BundleError, load_manifest, shard_for
from testbed.partition.evaluate import failure_subsets, merge_batch
from testbed.partition.pipeline import (CompareResult, ExportParityError, GraphSpec, PartitionConfig, PartitionError,
                                        StudentSpec, TeacherSpec, export_partitioned, run_compare)
from testbed.partition.students import (PartitionedStudents, StudentsConfig, at_loss, attention_map, merge_vectors,
                                        part_attention)

TINY = PartitionConfig(dataset="digits", students=4, parts=2,
                       teacher=TeacherSpec(widths=(8, 16, 32), epochs=6, batch_size=64, lr=0.01),
                       graph=GraphSpec(images=1000),
                       student=StudentSpec(width=6, part_dim=6, epochs=6, batch_size=64, lr=0.01))


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> tuple[CompareResult, Path]:
    cache = tmp_path_factory.mktemp("partition-cache")
    out = tmp_path_factory.mktemp("bundles")
    with _one_thread():
        return run_compare(TINY, cache_dir=cache, out_dir=out), cache


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Tiny models train no faster on 2 threads, and 2 threads on busy shared cores spin-wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_bundles_carry_every_key_and_their_hashes_verify(compared: tuple[CompareResult, Path]) -> None:
    result, _ = compared
    for method, rule, sp in (("nonn", "concat", [0, 1, 2, 3]), ("resilient", "average", [0, 1, 0, 1])):
        m = load_manifest(result.results[method].bundle_dir)
        assert m["format"] == 1 and m["method"] == method and m["S"] == 4 and m["students"] == 4
        assert m["merge_rule"] == rule and m["student_part"] == sp
        assert m["M"] == m["parts"] == len(m["part_filters"]) == (4 if method == "nonn" else 2)
        assert [s["name"] for s in m["shards"]] == ["student_0", "student_1", "student_2", "student_3", "merge"]
        assert [shard_for(m, role="student", index=i)["learns_part"] for i in range(4)] == sp
        assert shard_for(m, role="merge")["input"]["shape"] == [1, m["parts"] * m["part_dim"]]
        rep = m["partition"]
        for key in ("sizes", "intra_share", "random_intra_share", "dropped", "dropped_reason", "at_1_percent"):
            assert key in rep
        filters = [f for p in m["part_filters"].values() for f in p]
        assert len(filters) == len(set(filters))                      # parts are disjoint
        assert sorted(filters + rep["dropped"]) == list(range(32))    # every filter placed or dropped
        assert [r["k"] for r in m["evaluation"]["resilience"]] == [0, 1, 2, 3]
    res = load_manifest(result.results["resilient"].bundle_dir)
    assert res["partition"]["sizes"] == [16, 16] and res["partition"]["dropped"] == []


def test_shards_with_the_edge_merger_reproduce_the_unified_model(compared: tuple[CompareResult, Path]) -> None:
    result, cache = compared
    ds_x = _digits_test()[:8]
    for method in ("nonn", "resilient"):
        bundle = result.results[method].bundle_dir
        m = load_manifest(bundle)
        model = _reload(m, cache)
        vecs = [open_runtime("torch", bundle / shard_for(m, role="student", index=i)["file"]).run(ds_x)
                for i in range(4)]
        merge_rt = open_runtime("torch", bundle / shard_for(m, role="merge")["file"])
        for missing in ((), (1,), (0, 2)):
            merger = Merger(parts=range(4), part_dim=m["part_dim"], deadline_s=1.0, rule=m["merge_rule"],
                            student_part=m["student_part"])
            merged = []
            for n in range(len(ds_x)):
                merger.expect(n, now=0.0)
                for i in range(4):
                    if i not in missing:
                        merged.append(merger.add(n, i, vecs[i][n], now=0.0))
            merged = [z for z in merged if z is not None] + merger.expire(now=2.0)
            got = [merge_rt.run(z.inputs)[0] for z in sorted(merged, key=lambda z: z.sample_id)]
            assert len(got) == len(ds_x)
            present = torch.tensor([i not in missing for i in range(4)])
            with torch.no_grad():
                want = model(torch.from_numpy(ds_x), present).numpy()
            np.testing.assert_allclose(np.stack(got), want, rtol=1e-4, atol=1e-4)


def test_evaluation_rows_are_consistent(compared: tuple[CompareResult, Path]) -> None:
    result, _ = compared
    for res in result.results.values():
        assert res.rows[0].mean == pytest.approx(res.accuracy, abs=1e-12)
        assert res.manifest["evaluation"]["test_accuracy"] == res.accuracy
        for row in res.rows:
            assert row.worst <= row.mean <= row.best
            assert row.subsets == math.comb(4, row.k) and not row.sampled
            assert len(row.worst_failed) == row.k
    assert 0.0 < result.teacher_accuracy <= 1.0


def test_a_second_run_loads_teacher_and_students_from_the_cache(compared: tuple[CompareResult, Path],
                                                               tmp_path: Path) -> None:
    result, cache = compared
    with _one_thread():
        again = run_compare(TINY, cache_dir=cache, out_dir=tmp_path, methods=("resilient",))
    assert again.teacher.get("cached") is True
    assert again.results["resilient"].manifest["students_cached"] is True
    assert again.results["resilient"].accuracy == result.results["resilient"].accuracy


def test_tampered_shard_is_refused(compared: tuple[CompareResult, Path], tmp_path: Path) -> None:
    result, _ = compared
    copy = tmp_path / "b"
    shutil.copytree(result.results["resilient"].bundle_dir, copy)
    data = bytearray((copy / "student_2.ts").read_bytes())
    data[-20] ^= 0xFF
    (copy / "student_2.ts").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="student_2.ts"):
        load_manifest(copy)


# -- pure pieces -------------------------------------------------------------------------------

@pytest.mark.parametrize("rule,student_part", [("concat", [0, 1, 2, 3]), ("average", [0, 1, 0, 1]),
                                               ("average", [0, 1, 2, 0, 1, 2])])
def test_vectorised_merge_agrees_with_the_edge_merger(rule: str, student_part: list[int]) -> None:
    rng = np.random.default_rng(3)
    s, d, n = len(student_part), 5, 6
    v = rng.random((n, s, d)).astype(np.float32)
    patterns = [(), (0,), (1, 3), tuple(range(1, s)), tuple(range(s))]
    present = np.array([[i not in p for i in range(s)] for p in patterns])
    z = merge_batch(v, present, rule=rule, student_part=student_part)
    zt = merge_vectors(torch.from_numpy(v)[None].expand(len(patterns), n, s, d).reshape(-1, s, d),
                       torch.from_numpy(np.repeat(present, n, axis=0)), rule=rule, student_part=student_part)
    np.testing.assert_allclose(zt.numpy().reshape(z.shape), z, rtol=1e-6, atol=1e-7)
    for u, missing in enumerate(patterns):
        merger = Merger(parts=range(s), part_dim=d, deadline_s=1.0, rule=rule, student_part=student_part)
        done = []
        for sample in range(n):
            merger.expect(sample, now=0.0)
            for i in range(s):
                if i not in missing:
                    done.append(merger.add(sample, i, v[sample, i], now=0.0))
        done = [m for m in done if m is not None] + merger.expire(now=5.0)
        assert sorted(m.sample_id for m in done) == list(range(n))
        for merged in done:
            np.testing.assert_allclose(merged.inputs[0], z[u, merged.sample_id], rtol=1e-6, atol=1e-7)


def test_failure_subsets_are_all_or_a_stated_sample() -> None:
    subsets, sampled = failure_subsets(6, 3, max_subsets=200)
    assert len(subsets) == 20 and not sampled and len(set(subsets)) == 20
    subsets, sampled = failure_subsets(12, 6, max_subsets=50, seed=1)
    assert sampled and len(subsets) == len(set(subsets)) == 50 and all(len(f) == 6 for f in subsets)


def test_attention_loss_is_zero_when_the_student_attends_like_its_part() -> None:
    maps = torch.rand(3, 8, 4, 4)
    teacher = torch.from_numpy(part_attention(maps.numpy(), [[0, 1, 2, 3], [4, 5, 6, 7]]))
    assert at_loss([maps[:, :4], maps[:, 4:]], teacher, [0, 1]).item() == pytest.approx(0.0, abs=1e-7)
    assert at_loss([maps[:, 4:], maps[:, :4]], teacher, [0, 1]).item() > 1e-4
    q = attention_map(torch.rand(2, 5, 8, 8), size=(4, 4))
    assert q.shape == (2, 16) and torch.allclose(q.norm(dim=1), torch.ones(2))


class _ShapeDependent(torch.nn.Module):
    """Batch-size-dependent control flow: torch.jit.trace freezes the batch-1 branch."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return out if x.shape[0] == 1 else out + 0.5


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_export_fails_loudly_when_a_traced_shard_diverges(tmp_path: Path) -> None:
    cfg = StudentsConfig(input_shape=(1, 8, 8), num_classes=10, student_part=(0, 1, 0, 1), merge_rule="average",
                         width=2, part_dim=3)
    model = PartitionedStudents(cfg, mean=0.0, std=1.0).eval()
    x = np.random.default_rng(0).random((16, 1, 8, 8)).astype(np.float32)
    shards, errors = export_partitioned(model, out_dir=tmp_path / "ok", samples=x)
    assert max(errors.values()) <= 1e-4 and len(shards) == 5
    model.students[2] = _ShapeDependent(model.students[2])
    with pytest.raises(ExportParityError, match="student_2"):
        export_partitioned(model, out_dir=tmp_path / "bad", samples=x)


def test_resilient_needs_at_least_two_students_per_part() -> None:
    with pytest.raises(PartitionError, match="M <= S/2"):
        PartitionConfig(dataset="digits", method="resilient", students=4, parts=3)
    with pytest.raises(PartitionError, match="nonn, resilient"):
        PartitionConfig(dataset="digits", method="layer")


# -- helpers -----------------------------------------------------------------------------------

def _digits_test() -> np.ndarray:
    from testbed.data import load_digits
    return load_digits().x_test


def _reload(manifest: dict, cache: Path) -> PartitionedStudents:
    """The torch module the bundle was exported from, straight from the students cache."""
    from testbed.partition.pipeline import _students_config
    from testbed.data import load_digits
    cfg = _students_config(TINY.__class__(**{**TINY.__dict__, "method": manifest["method"]}), load_digits(),
                           manifest["student_part"])
    model = PartitionedStudents(cfg, mean=0.0, std=1.0)
    folder = manifest["weights"]["students"]      # students-<config key>-n<numerics and data tag>
    assert folder.startswith(f"students-{manifest['config_key']}-n")
    model.load_state_dict(torch.load(cache / folder / "weights.pt", weights_only=True))
    return model.eval()


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)])
def test_teacher_and_student_take_28_and_32_pixel_inputs(shape: tuple[int, int, int]) -> None:
    from testbed.zoo import Student
    from testbed.partition.teacher import Teacher, TeacherConfig
    teacher = Teacher(TeacherConfig(dataset="x", input_shape=shape, num_classes=100), mean=0.0, std=1.0).eval()
    student = Student(in_channels=shape[0], width=6, part_dim=5, mean=0.0, std=1.0).eval()
    x = torch.zeros(2, *shape)
    with torch.no_grad():
        assert teacher(x).shape == (2, 100) and student(x).shape == (2, 5)
        side = -(-shape[1] // 4)   # stages 2 and 3 halve the resolution
        assert teacher.final_maps(x).shape == (2, 64, side, side)
