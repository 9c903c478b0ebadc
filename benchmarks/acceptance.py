"""The acceptance recipes over several seeds: how far above its level each figure sits.

Runs the two acceptance recipes of the test suite (``avfeat.testing.recipes``: the same constants and
helpers the tests use) once per seed, where a seed moves both the synthetic corpora and the
training, and prints per figure its level, minimum, median and maximum as a table, then the
whole result as one JSON line. Asserts nothing; the tests assert the levels
(``ACCEPTANCE_LEVELS``), which must sit below every minimum here.

- align (tests/align/test_acceptance.py): held-out class R@1 of max-mean heads, audio → visual
  and visual → audio, and of mean-pool heads (which max-mean must beat);
- index (tests/index/test_acceptance.py): held-out class R@1 through the indexes from each side,
  plain and with ``--rerank 20``; sync within 0.2 s; locate (right video, start within 0.2 s);
- defaults (tests/index/test_defaults_acceptance.py): the same held-out checks with no options
  anywhere (2 fps, the derived schedule, the default rerank) on the 80-video corpus.

    python benchmarks/acceptance.py                  # seeds 0-4, all three recipes (CPU: ~8 min a seed)
    python benchmarks/acceptance.py --seeds 0 1 --only index
    python benchmarks/acceptance.py --smoke          # one seed, every recipe at toy sizes: does it run?
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from _bench import machine, parse, parser, timed
from avfeat.testing import recipes


def with_values(args, values: dict) -> list:
    """A command line with the value after each flag of ``values`` replaced."""
    args = list(args)
    for flag, value in values.items():
        args[args.index(flag) + 1] = value
    return args


def shrink_recipes() -> None:
    """--smoke: every recipe at toy sizes (their figures mean nothing). The sizes live in
    ``avfeat.testing.recipes``, shared with the tests, so they are changed in this process only: its
    constants rebound, one training pass, and every corpus `avfeat synth` writes cut to 6 videos
    (the index recipe names its corpora's sizes in the call)."""
    recipes.ALIGN_CORPUS = {**recipes.ALIGN_CORPUS, "videos": 10, "classes": 2}
    recipes.ALIGN_RECIPE = {**recipes.ALIGN_RECIPE, "epochs": 1, "passes_per_epoch": 1, "batch_size": 4}
    recipes.INDEX_RECIPE = with_values(recipes.INDEX_RECIPE, {"--epochs": 1, "--passes-per-epoch": 1, "--batch-size": 4})
    recipes.SYNC_SECONDS = 4  # the offset corpus's files (the locate clips need 4 s files too)
    run_avfeat = recipes.run_avfeat

    def small_run_avfeat(command, *args, **kwargs):
        if command == "synth":
            args = with_values(args, {"--videos": 6})
        if command == "train-head" and "--epochs" not in args:  # the defaults recipe: its derived 200 steps cut to 5
            args = (*args, "--steps", 5)
        return run_avfeat(command, *args, **kwargs)

    recipes.run_avfeat = small_run_avfeat


def run_align(work: Path, seed: int) -> dict[str, float]:
    corpus, cache = recipes.align_acceptance_cache(work / "align", seed=seed)
    figures = {}
    for aggregation in ("max-mean", "mean-pool"):
        heads = recipes.train_align_heads(cache, work / "align" / aggregation, aggregation=aggregation, seed=seed)
        a2v, v2a, _ = recipes.align_class_recall(corpus, cache, heads)
        figures[f"align {aggregation} a2v"], figures[f"align {aggregation} v2a"] = a2v, v2a
    for side in ("a2v", "v2a"):  # the test asks max-mean to beat mean-pool
        figures[f"align {side} max-mean minus mean-pool"] = figures[f"align max-mean {side}"] - figures[f"align mean-pool {side}"]
    return figures


def run_index(work: Path, seed: int) -> dict[str, float]:
    root = work / "index"
    searcher = recipes.build_index_acceptance(root, seed=seed)
    tokens = recipes.held_out_tokens(root, searcher)
    figures = {}
    for side, name in (("audio", "a2v"), ("visual", "v2a")):
        for rerank, label in ((0, "plain"), (recipes.INDEX_RERANK, "rerank")):
            figures[f"index {name} {label}"], _ = recipes.held_out_class_r1(root, searcher, tokens, side, rerank)
    figures["index sync"], _ = recipes.sync_accuracy(root, searcher)
    figures["index locate"], _ = recipes.locate_accuracy(searcher, work / "clips")
    return figures


def run_defaults(work: Path, seed: int) -> dict[str, float]:
    root = work / "defaults"
    searcher = recipes.build_defaults_acceptance(root, seed=seed)
    tokens = recipes.held_out_tokens(root, searcher)
    figures = {}
    for side, name in (("audio", "a2v"), ("visual", "v2a")):
        figures[f"defaults {name}"], _ = recipes.held_out_class_r1(root, searcher, tokens, side, rerank=None)
    figures["defaults sync"], _ = recipes.sync_accuracy(root, searcher)
    return figures


def main() -> int:
    options = parser(__doc__)
    options.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    options.add_argument("--only", choices=["align", "index", "defaults"], help="run one recipe only")
    options.add_argument("--work", type=Path, help="keep the corpora, caches and heads here (default: a temporary folder)")
    args = parse(options, smoke=dict(seeds=[0]))
    if args.smoke:
        shrink_recipes()

    recipes_to_run = {"align": run_align, "index": run_index, "defaults": run_defaults}
    if args.only:
        recipes_to_run = {args.only: recipes_to_run[args.only]}
    where = f"{machine()}, {torch.get_num_threads()} torch threads available, runs use 1"
    print(f"# {where}; torch {torch.__version__}; seeds {args.seeds}", flush=True)

    per_seed: dict[int, dict[str, float]] = {}
    seconds: dict[str, list[float]] = {name: [] for name in recipes_to_run}
    with tempfile.TemporaryDirectory(prefix="avfeat-acceptance-") as tmp:
        base = args.work or Path(tmp)
        for seed in args.seeds:
            per_seed[seed] = {}
            for name, run in recipes_to_run.items():
                took, found = timed(lambda: run(base / f"seed{seed}", seed))
                per_seed[seed].update(found)
                seconds[name].append(took)
                figures = ", ".join(f"{k} {v:.3f}" for k, v in per_seed[seed].items() if k.startswith(name))
                print(f"seed {seed} {name} ({seconds[name][-1]:.0f} s): {figures}", flush=True)

    metrics = list(per_seed[args.seeds[0]])
    summary = {}
    for metric in metrics:
        values = [per_seed[seed][metric] for seed in args.seeds]
        summary[metric] = {
            "level": recipes.ACCEPTANCE_LEVELS.get(metric),
            "min": min(values),
            "median": statistics.median(values),
            "max": max(values),
            "values": values,
        }
    print()
    print("| figure | level | min | median | max | per seed |")
    print("|---|---|---|---|---|---|")
    for metric, row in summary.items():
        level = "" if row["level"] is None else f"{row['level']:.2f}"
        values = " ".join(f"{v:.3f}" for v in row["values"])
        print(f"| {metric} | {level} | {row['min']:.3f} | {row['median']:.3f} | {row['max']:.3f} | {values} |")
    below = [m for m, row in summary.items() if row["level"] is not None and row["min"] < row["level"]]
    print(f"\nminimum below its level: {', '.join(below) if below else 'none'}")
    print(json.dumps({
        "machine": where,
        "seeds": args.seeds,
        "seconds_per_seed": {name: statistics.median(values) for name, values in seconds.items()},
        "figures": summary,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
