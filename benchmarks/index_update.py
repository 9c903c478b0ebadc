"""`avfeat index --update` against a full rebuild (prints, never asserts).

A synthetic collection of ``--n`` clustered random unit vectors of ``--dim`` dims (one modality;
an index has two, each costing the same) is indexed as `avfeat index` indexes a modality
(``build_faiss``: the automatic index choice, or ``--factory``; ``write_index``), then
``--grow`` (1%) more vectors arrive:

- update: ``append_to_index``, what `--update` does once the new windows are embedded: map the
  last FAISS file for its trained quantizer, add the new vectors to an empty copy of it, write
  that as a delta file with a new table part, commit meta.json (the files already there are not
  rewritten);
- rebuild: ``build_faiss`` over all vectors (train, add, tune nprobe) and ``write_index``.

Embedding windows through the heads is left out of both: an update embeds only the new 1%, a
rebuild all of them, so with embedding the gap is wider still. Each is run ``--repeats`` times
from a fresh copy of the folder (the copy is not timed); medians are printed, with recall@10
against exact search of both results.

    python benchmarks/index_update.py                          # 200k x 128, about a minute on 2 CPU cores
    python benchmarks/index_update.py --n 1000000 --dim 256    # the 1M case
    python benchmarks/index_update.py --smoke                  # 20k x 16, IVF64: does it run?
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np

from _bench import machine, parse, parser, timed


def clustered(n: int, dim: int, seed: int, centres: int = 5000) -> np.ndarray:
    """Unit vectors around random centres (the structure IVF relies on; window vectors have it)."""
    rng = np.random.default_rng(seed)
    middle = np.random.default_rng(99).standard_normal((centres, dim), dtype=np.float32)
    x = middle[rng.integers(centres, size=n)] + 0.6 * rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def table(first: int, n: int):
    """An index table of ``n`` windows (ids from ``first``) with one metadata column."""
    import pyarrow as pa

    ids = np.arange(first, first + n, dtype=np.int64)
    return pa.table({
        "id": ids, "video_id": pa.array([f"video_{i // 20:07d}" for i in ids]), "path": pa.array([f"/data/video_{i // 20:07d}.mp4" for i in ids]),
        "start": (ids % 20) * 0.5, "end": (ids % 20) * 0.5 + 1.0, "label": pa.array([f"class_{i % 10}" for i in ids]),
    })


def write(folder: Path, built, count: int, rows) -> None:
    from avfeat.index.store import write_index

    meta = {"dim": built.shards[0].d, "cache": {"fingerprint": "synthetic"}, "heads": {"fingerprint": "synthetic"},
            "modalities": {"audio": {"count": count, **built.describe()}}}
    write_index(folder, meta, {"audio": built.shards}, {"audio": rows})


def recall(folder: Path, queries: np.ndarray, truth: np.ndarray) -> float:
    from avfeat.index.build import recall_at_k
    from avfeat.index.store import IndexFolder

    _, found = IndexFolder(folder, mmap=False).faiss_index("audio").search(queries, truth.shape[1])
    return recall_at_k(found, truth)


def main() -> None:
    options = parser(__doc__, repeats=3)
    options.add_argument("--n", type=int, default=200_000, help="vectors in the index before the update")
    options.add_argument("--dim", type=int, default=128)
    options.add_argument("--grow", type=float, default=0.01, help="fraction of --n added")
    options.add_argument("--factory", default=None, help="FAISS factory string (default: the automatic choice)")
    options.add_argument("--tmp", default=None, help="folder for the index copies (default: the system's temp folder)")
    # --smoke names an IVF index: at this size the automatic choice is Flat, and the IVF update
    # (adding with the trained quantizer) is the case that matters.
    args = parse(options, smoke=dict(n=20_000, dim=16, factory="IVF64,Flat"))

    import faiss

    from avfeat.index.build import build_faiss
    from avfeat.index.update import append_to_index
    from avfeat.index.store import IndexFolder

    added = max(1, int(round(args.n * args.grow)))
    base, new = clustered(args.n, args.dim, 0), clustered(added, args.dim, 1)
    queries, tune = clustered(1000, args.dim, 2), clustered(1000, args.dim, 3)
    everything = np.concatenate([base, new])
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(everything)
    _, truth = exact.search(queries, 10)

    print(f"== --update of +{added:,} vectors ({args.grow:.0%}) into {args.n:,} x {args.dim} vs a rebuild of {len(everything):,} ==")
    print(f"machine: {machine()}, faiss {faiss.__version__}, GPUs {faiss.get_num_gpus()}")
    with tempfile.TemporaryDirectory(dir=args.tmp) as root:
        root = Path(root)
        original = root / "original"
        built = build_faiss(base, args.factory, queries=tune)
        write(original, built, args.n, table(0, args.n))
        size = sum(p.stat().st_size for p in original.iterdir() if p.is_file())
        print(f"index: {built.factory} {built.params or ''}, {size / 2**20:.0f} MiB on disk; built in {built.build_seconds:.1f} s")

        IndexFolder(original)  # imports its checks need (torch: `--update` has it loaded to embed), not timed
        updates, rebuilds = [], []
        def update(folder: Path) -> None:
            opened = IndexFolder(folder, mmap=False)
            append_to_index(opened, {"audio": new}, table(args.n, added), opened.meta)

        def rebuild(folder: Path):
            built = build_faiss(everything, args.factory, queries=tune)
            write(folder, built, len(everything), table(0, len(everything)))
            return built

        for repeat in range(args.repeats):  # interleaved, so drifting machine load hits both alike
            shutil.copytree(original, root / f"update{repeat}")  # not timed
            seconds, _ = timed(lambda: update(root / f"update{repeat}"))
            updates.append(seconds)
            seconds, again = timed(lambda: rebuild(root / f"rebuild{repeat}"))
            rebuilds.append(seconds)

        update_recall, rebuild_recall = recall(root / "update0", queries, truth), recall(root / "rebuild0", queries, truth)
        update_s, rebuild_s = statistics.median(updates), statistics.median(rebuilds)
        print(f"{'':<9} {'median s':>9} {'runs s':<24} {'recall@10':>9}")
        print(f"{'update':<9} {update_s:>9.2f} {' '.join(f'{t:.2f}' for t in updates):<24} {update_recall:>9.3f}")
        print(f"{'rebuild':<9} {rebuild_s:>9.2f} {' '.join(f'{t:.2f}' for t in rebuilds):<24} {rebuild_recall:>9.3f}   ({again.factory} {again.params or ''})")
        print(f"update takes {update_s / rebuild_s:.1%} of a rebuild's time ({rebuild_s / update_s:.0f}x faster; goal <= 5%)")
        print(f"recall@10 updated - rebuilt: {update_recall - rebuild_recall:+.3f} (goal >= -0.01)")


if __name__ == "__main__":
    main()
