"""Corpus audit benchmark (prints, never asserts).

A synthetic corpus with a share of known audio defects (`avfeat synth --corrupt`: another
video's soundtrack, a foreign sound over the scene, silence, an offset of 0.4-2 s) is extracted
with the tiny random backbones; heads are trained on it as a user would (defects included) and
`avfeat audit` scores it. Printed:

- ROC AUC of the correspondence score, clean videos against each defect type;
- expected calibration error (10 bins) of p_match against "clean", of p_belongs against "the
  video's own sound is there" (clean, shifted, overlaid) and of p_sync against "offset within
  one step" (never, for another video's track or silence);
- offset accuracy within one step (0.2 s) on the shifted videos, and the AUC of p_sync and of
  the raw sync confidence separating right from wrong estimates;
- held-out class R@1 (a clean corpus of the same classes never trained on) of heads trained on
  the corrupted corpus plain, with `--exclude`, with `--weight-by`, and on the clean twin
  corpus (same videos, no defects), with each audited variant's share of the clean figure;
- audit seconds per media-hour of cache on this machine.

    python benchmarks/audit.py                  # 160 videos of 8 s, 30% defects, ~10 min on 2 cores
    python benchmarks/audit.py --seeds 3        # R@1 over 3 training seeds
    python benchmarks/audit.py --timing         # only the audit's cost at the defaults' geometry
    python benchmarks/audit.py --smoke          # both parts at toy sizes and tiny models: does it run?

``--timing`` extracts 20 synthetic videos of 30 s with `random:hubert-base` + `random:dinov2-small`
(the real models' sizes) at 1 fps, trains heads of the default width for a few steps and times
`avfeat audit` on them: seconds per media-hour at the token sizes a user's cache has.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from _bench import machine, median_time, parse, parser, timed, work_folder

RECIPE = ["--window", 1.5, "--head", "mlp", "--dim", 64, "--batch-size", 32, "--passes-per-epoch", 10, "--epochs", 6,
          "--lr", 1e-2, "--temporal-negatives", "--min-shift", 0.4, "--val-fraction", 0.1]
SMOKE_RECIPE = ["--window", 1.5, "--head", "mlp", "--dim", 16, "--batch-size", 8, "--passes-per-epoch", 5, "--epochs", 1, "--lr", 1e-2,
                "--temporal-negatives", "--min-shift", 0.4, "--val-fraction", 0.1]


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half (the Mann-Whitney form)."""
    positive, negative = np.asarray(positive, float), np.asarray(negative, float)
    if not len(positive) or not len(negative):
        return float("nan")
    above = (positive[:, None] > negative[None, :]).mean()
    ties = (positive[:, None] == negative[None, :]).mean()
    return float(above + 0.5 * ties)


def calibration_error(probability: np.ndarray, outcome: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: the bins' |mean probability - observed rate|, weighted by size."""
    probability, outcome = np.asarray(probability, float), np.asarray(outcome, float)
    which = np.minimum((probability * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.mean() * abs(probability[inside].mean() - outcome[inside].mean())
    return float(error)


def class_r1(cache_path: Path, corpus: Path, heads: Path, per_video: int = 4) -> tuple[float, float]:
    """Class R@1 both ways over evenly spaced windows of every video of a held-out cache."""
    import pyarrow.parquet as pq
    import torch

    from avfeat.align import data
    from avfeat.align.checkpoint import load_checkpoint
    from avfeat.align.evaluate import window_scores
    from avfeat.align.metrics import both_directions

    checkpoint = load_checkpoint(heads)
    cache = data.open_cache(cache_path)
    ids = [r.video_id for r in cache.records(status="ok")]
    _, table = data.check_window(cache, ids, checkpoint.window)
    windows = torch.as_tensor(table.evenly_spaced(list(range(len(ids))), per_video))
    scores = window_scores(checkpoint.heads.eval(), data.MemoryWindows(cache, table, torch.device("cpu")), windows, checkpoint.aggregation)
    truth = {row["path"]: row["class"] for row in pq.read_table(corpus / "ground_truth.parquet").to_pylist()}
    labels = [truth[os.path.basename(cache.record(ids[k]).path)] for k in table.video[windows.numpy()]]
    metrics = both_directions(scores, labels, labels)
    return metrics["a2v"]["R@1"], metrics["v2a"]["R@1"]


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--videos", type=int, default=160)
    options.add_argument("--seconds", type=float, default=8.0)
    options.add_argument("--classes", type=int, default=6)
    options.add_argument("--corrupt", type=float, default=0.3)
    options.add_argument("--held-out", type=int, default=40, help="clean videos of the same classes for R@1")
    options.add_argument("--seeds", type=int, default=1, help="training seeds for the R@1 comparison")
    options.add_argument("--work", type=Path, default=None, help="keep corpora, caches and heads here")
    options.add_argument("--timing", action="store_true", help="only time the audit at the defaults' geometry")
    # --smoke: half the videos corrupted, so that defects of several kinds turn up among 8.
    args = parse(options, smoke=dict(videos=8, seconds=3.0, classes=2, corrupt=0.5, held_out=4))
    if args.timing:
        return timing(work_folder(args.work, "avfeat-audit-timing-", keep=not args.smoke), args.smoke)

    import pyarrow.parquet as pq

    from avfeat.testing.runner import TINY_MODELS, run_avfeat

    work = work_folder(args.work, "avfeat-audit-", keep=not args.smoke)  # printed at the end, for reuse
    common = ["--classes", args.classes, "--size", 96, "--seconds", args.seconds, "--quiet"]
    corpora = {"corrupt": ["--corrupt", args.corrupt], "clean": [], "held": []}
    for name, extra in corpora.items():
        if not (work / name / "ground_truth.parquet").is_file():
            videos, seed = (args.held_out, 1) if name == "held" else (args.videos, 0)
            run_avfeat("synth", work / name, "--videos", videos, "--seed", seed, *common, *extra, check=0)
        if not (work / f"{name}-cache" / "cache.json").is_file():
            run_avfeat("extract", work / name, "--out", work / f"{name}-cache", *TINY_MODELS, "--fps", 5, "--workers", 1, "--quiet", check=0)

    def train(name: str, cache: str, seed: int, *extra) -> Path:
        out = work / f"heads-{name}-{seed}"
        if not (out / "heads.safetensors").is_file():
            run_avfeat("train-head", work / cache, "--out", out, *(SMOKE_RECIPE if args.smoke else RECIPE), "--seed", seed, "--workers", 0, "--quiet", *extra, check=0)
        return out

    heads = train("plain", "corrupt-cache", 0)
    audit = work / "audit.parquet"
    audit_seconds, _ = timed(lambda: run_avfeat("audit", work / "corrupt-cache", "--heads", heads, "--out", audit, "--overwrite", "--quiet", check=0))

    truth = {row["path"]: row for row in pq.read_table(work / "corrupt" / "ground_truth.parquet").to_pylist()}
    rows = pq.read_table(audit).to_pylist()
    for row in rows:
        row["truth"] = truth[os.path.basename(row["path"])]
    defect = np.array([r["truth"]["defect"] for r in rows])
    score = np.array([r["correspondence"] for r in rows])
    p_match = np.array([r["p_match"] for r in rows])
    clean = defect == ""
    media_hours = sum(r["truth"]["duration"] for r in rows) / 3600
    own_sound = clean | (defect == "offset") | (defect == "overlay")  # the video's sound is there, at some lag
    offset_error = np.array([abs(r["offset"] - r["truth"]["offset"]) for r in rows])
    right = own_sound & (offset_error <= 0.2)  # another video's track or silence has no right offset
    p_sync = np.array([r["p_sync"] for r in rows])
    p_belongs = np.array([r["p_belongs"] for r in rows])
    confidence = np.array([r["sync_confidence"] for r in rows])
    silent = np.array([bool(r["silent"]) for r in rows])
    types = sorted(t for t in set(defect) if t)
    figures = {
        "machine": machine(),
        "videos": len(rows), "media_hours": round(media_hours, 3), "defects": {t: int((defect == t).sum()) for t in types},
        "auc_correspondence": {t: round(roc_auc(score[clean], score[defect == t]), 4) for t in types},
        "auc_correspondence_all_defects": round(roc_auc(score[clean], score[~clean]), 4),
        "ece_p_match": round(calibration_error(p_match, clean), 4),
        "ece_p_belongs": round(calibration_error(p_belongs, own_sound), 4),
        "offset_within_step": {"shifted": round(float((offset_error <= 0.2)[defect == "offset"].mean()), 4),
                               "clean": round(float((offset_error <= 0.2)[clean].mean()), 4)},
        "auc_right_vs_wrong_offset": {"p_sync": round(roc_auc(p_sync[right], p_sync[~right]), 4),
                                      "sync_confidence": round(roc_auc(confidence[right], confidence[~right]), 4)},
        "ece_p_sync": round(calibration_error(p_sync, right), 4),
        "silent_flag": {"silence videos flagged": int(silent[defect == "silence"].sum()), "others flagged": int(silent[defect != "silence"].sum())},
        "audit_seconds": round(audit_seconds, 1),
        "audit_seconds_per_media_hour": round(audit_seconds / media_hours, 1),
    }
    print(json.dumps(figures, indent=2))

    recall = {}
    for seed in range(args.seeds):
        variants = {
            "corrupted, plain": train("plain", "corrupt-cache", seed),
            # --smoke's barely trained heads score every video low: exclude none, so that some remain.
            "corrupted, --exclude": train("exclude", "corrupt-cache", seed, "--exclude", audit, *(["--min-correspondence", 0] if args.smoke else [])),
            "corrupted, --weight-by": train("weight", "corrupt-cache", seed, "--weight-by", audit),
            "clean corpus": train("clean", "clean-cache", seed),
        }
        for name, path in variants.items():
            a2v, v2a = class_r1(work / "held-cache", work / "held", path)
            recall.setdefault(name, []).append((a2v + v2a) / 2)
    clean_r1 = float(np.mean(recall["clean corpus"]))
    print(f"\nheld-out class R@1 (mean of both directions, {args.seeds} seed(s), {args.held_out} clean held-out videos)")
    for name, values in recall.items():
        mean = float(np.mean(values))
        print(f"  {name:<24} {mean:.3f}  ({mean / clean_r1:.1%} of clean)  per seed {', '.join(f'{v:.3f}' for v in values)}")
    if args.smoke:  # the --timing part too: both parts of the script run
        print()
        timing(work / "timing", smoke=True)
    else:
        print(f"\nwork folder: {work}")


def timing(work: Path, smoke: bool = False) -> None:
    """The audit's seconds per media-hour with HuBERT-base and DINOv2-small token sizes at 1 fps
    (``smoke``: 4 videos of 3 s, the tiny models, one run)."""
    import pyarrow.parquet as pq

    from avfeat.testing.runner import TINY_MODELS, run_avfeat

    models = ["--audio-model", "random:hubert-base", "--visual-model", "random:dinov2-small"]
    videos, seconds, size, repeats, geometry = 20, 30, 224, 3, "HuBERT-base 768 x 50 Hz, DINOv2-small 257 x 384 at 1 fps, heads dim 256"
    if smoke:
        models, videos, seconds, size, repeats, geometry = TINY_MODELS, 4, 3, 64, 1, "the tiny random models (--smoke)"
    if not (work / "cache" / "cache.json").is_file():
        run_avfeat("synth", work / "corpus", "--videos", videos, "--seconds", seconds, "--size", size, "--quiet", check=0)
        run_avfeat("extract", work / "corpus", "--out", work / "cache", *models, "--fps", 1, "--workers", 1, "--quiet", check=0)
    if not (work / "heads" / "heads.safetensors").is_file():
        run_avfeat("train-head", work / "cache", "--out", work / "heads", "--steps", 2 if smoke else 10, "--batch-size", 8, "--workers", 0, "--quiet", check=0)
    median, _ = median_time(
        lambda: run_avfeat("audit", work / "cache", "--heads", work / "heads", "--out", work / "audit.parquet", "--overwrite", "--quiet", check=0), repeats
    )
    hours = sum(r["duration"] for r in pq.read_table(work / "audit.parquet").to_pylist()) / 3600
    print(json.dumps({"machine": machine(), "videos": videos, "media_hours": round(hours, 4), "geometry": geometry,
                      f"audit_seconds_median_of_{repeats}": round(median, 2), "seconds_per_media_hour": round(median / hours, 1)}, indent=2))


if __name__ == "__main__":
    main()
