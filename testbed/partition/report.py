"""Reports of a NoNN-vs-resilient comparison: the summary dict, markdown tables and the plot.

Holds ``summarise`` (a CompareResult -> plain JSON-able dict: teacher accuracy, one row per k
with mean/worst accuracy of both methods, partition stats, wall times, whether the issue's
target is met), ``table`` and ``partition_table`` (markdown), ``plot`` (accuracy vs k
failed students, PNG via matplotlib's Agg backend), ``write_compare`` (the three files of
``testbed partition --compare``) and ``render_bundle`` (what ``testbed partition`` prints about a
bundle). Used by the CLI and bench/partition_resilience.py.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from testbed.partition.pipeline import CompareResult, PartitionConfig
from testbed.training import numerics_record

TARGET = ("resilient >= NoNN at every k >= 1 (mean and worst) and within 0.5 pt of NoNN at k = 0")


def summarise(result: CompareResult, cfg: PartitionConfig, *, wall_s: float) -> dict[str, Any]:
    nonn, res = result.results["nonn"], result.results["resilient"]
    rows = [{"k": a.k, "nonn_mean": round(a.mean, 4), "nonn_worst": round(a.worst, 4),
             "resilient_mean": round(b.mean, 4), "resilient_worst": round(b.worst, 4),
             "subsets": a.subsets, "sampled": a.sampled,
             "nonn_worst_failed": list(a.worst_failed), "resilient_worst_failed": list(b.worst_failed)}
            for a, b in zip(nonn.rows, res.rows)]
    k0 = rows[0]
    met = (all(r["resilient_mean"] >= r["nonn_mean"] and r["resilient_worst"] >= r["nonn_worst"] for r in rows[1:])
           and k0["resilient_mean"] >= k0["nonn_mean"] - 0.005)
    part = {m: {"sizes": r.partition["sizes"], "dropped": len(r.partition["dropped"]),
                "dropped_reason": r.partition["dropped_reason"], "intra_share": r.partition["intra_share"],
                "random_intra_share": r.partition["random_intra_share"]["mean"],
                "top_k": r.partition["top_k"], "edges": r.partition["edges"], "connected_filters": r.partition["connected_filters"],
                "at_1_percent": {k: r.partition["at_1_percent"][k] for k in ("edges", "connected_filters")}}
            for m, r in result.results.items()}
    return {
        "dataset": cfg.dataset, "S": cfg.students, "M": cfg.parts,
        "teacher_accuracy": round(result.teacher_accuracy, 4), "rows": rows,
        "wall_s": {"total": round(wall_s, 1), "teacher": result.timings["teacher"],
                   "teacher_train_seconds": result.teacher.get("train_seconds"),
                   "teacher_cached": bool(result.teacher.get("cached")),
                   "teacher_pass": result.timings["teacher_pass"],
                   **{f"{m}_{k}": v for m, r in result.results.items() for k, v in r.timings.items()},
                   **{f"{m}_students_cached": r.manifest["students_cached"] for m, r in result.results.items()}},
        "target_met": met, "partition": part,
        "config": {"teacher": vars(cfg.teacher), "graph": vars(cfg.graph), "student": vars(cfg.student),
                   "seed": cfg.seed, "test_samples": nonn.manifest["evaluation"]["test_samples"]},
        "machine": numerics_record(),
    }


def table(summary: dict[str, Any]) -> str:
    t = summary["teacher_accuracy"]
    lines = [f"teacher accuracy (ceiling): {t:.4f}", "",
             "| k failed | subsets | NoNN mean | resilient mean (Δ vs NoNN) | NoNN worst | resilient worst (Δ vs NoNN) |",
             "|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        dm = 100 * (r["resilient_mean"] - r["nonn_mean"])
        dw = 100 * (r["resilient_worst"] - r["nonn_worst"])
        lines.append(f"| {r['k']} | {r['subsets']}{' (sampled)' if r['sampled'] else ''} | {r['nonn_mean']:.4f} | "
                     f"{r['resilient_mean']:.4f} ({dm:+.1f} pt) | {r['nonn_worst']:.4f} | "
                     f"{r['resilient_worst']:.4f} ({dw:+.1f} pt) |")
    return "\n".join(lines)


def partition_table(summary: dict[str, Any]) -> str:
    lines = ["| method | part sizes | filters dropped | edges kept (connected filters) | at NoNN's 1 % | "
             "intra-part share | random balanced split |", "|---|---|---|---|---|---|---|"]
    for m, p in summary["partition"].items():
        lines.append(f"| {m} | {p['sizes']} | {p['dropped']} | {p['edges']} ({p['connected_filters']}) | "
                     f"{p['at_1_percent']['edges']} ({p['at_1_percent']['connected_filters']}) | "
                     f"{p['intra_share']:.3f} | {p['random_intra_share']:.3f} |")
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["k"] for r in summary["rows"]]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.axhline(summary["teacher_accuracy"], color="0.4", lw=1, ls=":", label="teacher")
    for m, colour in (("nonn", "tab:red"), ("resilient", "tab:blue")):
        label = "NoNN" if m == "nonn" else f"resilient (M={summary['M']})"
        ax.plot(ks, [r[f"{m}_mean"] for r in summary["rows"]], "o-", color=colour, label=f"{label}, mean")
        ax.plot(ks, [r[f"{m}_worst"] for r in summary["rows"]], "s--", color=colour, alpha=0.7,
                label=f"{label}, worst")
    abl = summary.get("ablation")
    for m, colour in (("nonn", "tab:red"), ("resilient", "tab:blue")) if abl else ():
        ax.plot(ks, [r[f"{m}_mean"] for r in abl["rows"]], "^:", color=colour, alpha=0.45, lw=1,
                label=f"{'NoNN' if m == 'nonn' else 'resilient'}, mean, dropout {abl['dropout']}")
    ax.set_xticks(ks)
    ax.set_xlabel(f"failed students k (of S = {summary['S']})")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{summary['dataset']}: accuracy with k failed students")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_compare(compared: tuple[CompareResult, PartitionConfig], *, out_dir: Path,
                  final_dir: Path | None = None) -> dict[str, Any]:
    """Write ``comparison.{json,md,png}`` into ``out_dir``; the summary, with ``text`` (lines to print).
    ``final_dir``: where ``out_dir``'s content will live (build.compare writes into a temporary
    folder first); the paths printed and returned are there. It creates no folder but ``out_dir``
    and deletes nothing."""
    result, cfg = compared
    final = Path(final_dir) if final_dir is not None else Path(out_dir)
    bundles = {m: final / Path(r.bundle_dir).name for m, r in result.results.items()}
    summary = summarise(result, cfg, wall_s=result.timings["total"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, out_dir / "comparison.png")
    verdict = f"target ({TARGET}): {'met' if summary['target_met'] else 'NOT met'}"
    md = [f"# NoNN vs resilient: {summary['dataset']}, S = {summary['S']}, M = {summary['M']}", "",
          table(summary), "", partition_table(summary), "", verdict, "", "![accuracy](comparison.png)", ""]
    (out_dir / "comparison.md").write_text("\n".join(md))
    text = [f"NoNN vs resilient on {summary['dataset']}, S = {summary['S']}, M = {summary['M']} "
            f"(seed {cfg.seed}, {summary['config']['test_samples']:,} test images)", table(summary),
            partition_table(summary), verdict,
            *(f"bundle {m}: {d}" for m, d in bundles.items()),
            f"wrote {final}/comparison.{{json,md,png}}"]
    return {**summary, "out": str(final), "bundles": {m: str(d) for m, d in bundles.items()}, "text": text}


def render_bundle(manifest: dict[str, Any], *, bundle_dir: Path) -> list[str]:
    """What ``testbed partition`` prints about one bundle: partition, accuracy, shards."""
    ev = manifest.get("evaluation", {})
    lines = [f"bundle {bundle_dir}: method {manifest['method']}, S = {manifest['students']}, "
             f"M = {manifest['parts']}, merge {manifest['merge_rule']}, dataset {manifest['dataset']}"]
    rep = manifest.get("partition")
    if rep:
        lines.append(f"parts: sizes {rep['sizes']}, intra-part edge share {rep['intra_share']:.3f} "
                     f"(random balanced split {rep['random_intra_share']['mean']:.3f}), "
                     f"{len(rep['dropped'])} filters dropped ({rep['dropped_reason']})")
    if manifest["method"] == "layer":
        from testbed.partition.layersplit import SplitPlan
        lines.extend(SplitPlan.from_manifest(manifest).render().splitlines())
    if "test_accuracy" in ev:
        lines.append(f"accuracy: {ev['test_accuracy']:.4f} (teacher {ev.get('teacher_accuracy', float('nan')):.4f}) "
                     f"on {ev.get('test_samples', '?')} test images")
    num = manifest.get("numerics")
    if isinstance(num, dict):
        lines.append(f"trained with {num.get('threads')} torch thread(s), torch {num.get('torch')} "
                     f"({num.get('cpu_capability', '?')}); bundle key {manifest.get('bundle_key', '?')}")
    for row in ev.get("resilience", ()):
        lines.append(f"  k = {row['k']} failed: mean {row['mean']:.4f}, worst {row['worst']:.4f} "
                     f"over {row['subsets']} subsets{' (sampled)' if row.get('sampled') else ''}")
    for variant, acc in ev.get("litert", {}).items():
        lines.append(f"LiteRT {'f32' if variant == 'none' else variant}: accuracy {acc['accuracy']:.4f} vs torch "
                     f"{acc['torch_accuracy']:.4f} ({acc['delta_pt']:+.2f} pt) on {acc['images']} images")
    for shard in manifest["shards"]:
        files = [shard, *shard.get("alternates", ())]
        desc = ", ".join(f"{f['file']} ({(bundle_dir / f['file']).stat().st_size:,} B)" for f in files)
        lines.append(f"shard {shard['name']}: in {shard['input']['shape']} out {shard['output']['shape']}: {desc}")
    return lines
