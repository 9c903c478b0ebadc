"""`avfeat export`: the heads' embeddings of a cache as a table other tools read.

One row per video (``--level video``: the normalised mean of the video's window vectors) or per
window (``--level window``), with the video's id, path, the window's start and end, and every
metadata column of the cache's manifest (the input table's own columns, typed as extract kept
them), so pandas, duckdb, Hugging Face ``datasets`` or a notebook can filter and join without
avfeat. Vectors are unit-norm float32 per modality (``audio_embedding``, ``visual_embedding``):
inner product is cosine, as in the index.

Windows are those of ``avfeat index`` (``avfeat.align.windows``, the heads' window and hop) and
are projected by the same code (``avfeat.index.build.embed_cache``), so an exported window vector
is the vector the index searches. ``avfeat eval`` reuses :func:`embed_windows` and
:func:`video_vectors` for its kNN and linear-probe classification.

``--format parquet`` writes one file with a fixed-size list column per modality. ``--format npy``
writes the rows' table without vectors to ``--out`` and the vectors in the same order to
``<stem>.audio.npy`` and ``<stem>.visual.npy`` beside it (memory-mappable with
``numpy.load(..., mmap_mode="r")``). Existing files are refused unless ``--overwrite``; every
file is written to a temp name and renamed once all of them are complete.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from avfeat.core.errors import InputError

LEVELS = ("video", "window")
FORMATS = ("parquet", "npy")
MODALITIES = ("audio", "visual")


def vector_column(modality: str) -> str:
    return f"{modality}_embedding"


@dataclass
class WindowVectors:
    """Every window of a cache's ok videos (grouped by video, in manifest order) and its unit
    vector per modality."""

    windows: list  # avfeat.align.windows.Window
    vectors: dict[str, np.ndarray]  # modality → (len(windows), dim) float32
    skipped: list[str]  # ok videos shorter than one window (no vector)

    @property
    def video_ids(self) -> np.ndarray:
        return np.array([w.video_id for w in self.windows], dtype=object)


def embed_windows(cache, checkpoint, hop: float | None = None, quiet: bool = True) -> WindowVectors:
    """Project every window of ``cache`` through ``checkpoint``'s heads (the index's windows
    and pooling: ``avfeat.index.build.embed_cache``), on the CPU.

    The heads are small; a CPU copy keeps the token reads and the projection on one device
    whatever ``--device`` the checkpoint was loaded on.
    """
    import copy

    from avfeat.align.windows import WindowGeometry
    from avfeat.index.build import embed_cache

    heads = checkpoint.heads
    if next(heads.parameters()).device.type != "cpu":
        heads = copy.deepcopy(heads).cpu()
    geometry = WindowGeometry.for_cache(cache, checkpoint.window)
    windows, audio, visual = embed_cache(cache, heads, geometry, checkpoint.hop if hop is None else hop, checkpoint.aggregation, quiet, label="export")
    seen = {w.video_id for w in windows}
    skipped = [r.video_id for r in cache.records(status="ok") if r.video_id not in seen]
    return WindowVectors(windows, {"audio": _unit(audio), "visual": _unit(visual)}, skipped)


def video_vectors(video_ids: np.ndarray, vectors: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Window rows → (video ids in first-seen order, (V, dim) unit-norm mean of each video's
    window vectors, windows per video)."""
    order = list(dict.fromkeys(video_ids.tolist()))
    index = {vid: k for k, vid in enumerate(order)}
    rows = np.array([index[v] for v in video_ids], dtype=np.int64)
    sums = np.zeros((len(order), vectors.shape[1]), np.float64)
    np.add.at(sums, rows, vectors)
    counts = np.bincount(rows, minlength=len(order))
    return order, _unit(sums), counts


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def metadata_columns(cache) -> list[str]:
    """The manifest's metadata columns: everything a :class:`VideoRecord` keeps as metadata."""
    from avfeat.data.records import VideoRecord

    own = {f.name for f in fields(VideoRecord)}
    return [name for name in cache.manifest.column_names if name not in own]


def export_table(cache, embedded: WindowVectors, level: str):
    """(table without vectors, {modality: (rows, dim) float32}) of one export."""
    import pyarrow as pa

    records = {r.video_id: r for r in cache.records(status="ok")}
    if level == "video":
        ids, audio, counts = video_vectors(embedded.video_ids, embedded.vectors["audio"])
        _, visual, _ = video_vectors(embedded.video_ids, embedded.vectors["visual"])
        vectors = {"audio": audio, "visual": visual}
        columns = {
            "video_id": pa.array(ids, pa.string()),
            "path": pa.array([records[v].path for v in ids], pa.string()),
            "windows": pa.array(counts, pa.int32()),
        }
    else:
        ids = [w.video_id for w in embedded.windows]
        vectors = embedded.vectors
        columns = {
            "video_id": pa.array(ids, pa.string()),
            "path": pa.array([records[v].path for v in ids], pa.string()),
            "start": pa.array([w.start for w in embedded.windows], pa.float64()),
            "end": pa.array([w.end for w in embedded.windows], pa.float64()),
        }
    # Metadata straight from the manifest's Arrow columns, so every type is kept as stored.
    row_of = {vid: k for k, vid in enumerate(cache.manifest.column("video_id").to_pylist())}
    take = pa.array([row_of[v] for v in ids], pa.int64())
    for name in metadata_columns(cache):
        if name in columns or name in {vector_column(m) for m in MODALITIES}:
            raise InputError(f"the cache's metadata column {name!r} has the name of an export column; rename it in the input table")
        columns[name] = cache.manifest.column(name).take(take)
    return pa.table(columns), vectors


def with_vectors(table, vectors: dict[str, np.ndarray]):
    """``table`` plus a fixed-size list<float32> column per modality (plain Arrow types that
    pandas, duckdb and ``datasets`` read)."""
    import pyarrow as pa

    for modality in MODALITIES:
        values = np.ascontiguousarray(vectors[modality], dtype=np.float32)
        column = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
        table = table.append_column(vector_column(modality), column)
    return table


def output_files(out: Path, fmt: str) -> dict[str, Path]:
    """What one export writes: ``{"table": out}`` and, for npy, the vector files beside it."""
    files = {"table": out}
    if fmt == "npy":
        stem = out.with_suffix("") if out.suffix else out
        files.update({m: stem.with_name(f"{stem.name}.{m}.npy") for m in MODALITIES})
    return files


def write_export(files: dict[str, Path], table, vectors: dict[str, np.ndarray], fmt: str) -> None:
    """Every file to a temp name first, then all renamed (the table last), so an interrupted
    export leaves no half-written file under a final name."""
    import pyarrow.parquet as pq

    from avfeat.core.io import replace_durably, temp_path
    from avfeat.core.values import one_line

    temps: dict[str, Path] = {}
    try:
        if fmt == "npy":
            for modality in MODALITIES:
                temps[modality] = temp_path(files[modality])
                with open(temps[modality], "wb") as handle:  # a handle: np.save would add ".npy" to a name
                    np.save(handle, np.ascontiguousarray(vectors[modality], dtype=np.float32))
        else:
            table = with_vectors(table, vectors)
        temps["table"] = temp_path(files["table"])
        pq.write_table(table, temps["table"])
        for key in [k for k in temps if k != "table"] + ["table"]:
            replace_durably(temps[key], files[key])
    except OSError as error:
        raise InputError(f"cannot write {files['table']}: {one_line(error)}") from None
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)


def export(
    cache_path: str | Path,
    heads: str | Path,
    out: str | Path,
    level: str = "video",
    fmt: str = "parquet",
    hop: float | None = None,
    overwrite: bool = False,
    quiet: bool = True,
) -> dict:
    """Write the export (see the module docstring); returns a summary: files, rows, dim, videos,
    and the ok videos left out for being shorter than one window."""
    from avfeat.align.data import open_cache
    from avfeat.core.io import check_output_suffix, prepare_output_file
    from avfeat.core.outputs import refuse_inside
    from avfeat.core.values import check_number
    from avfeat.index.store import load_heads

    if level not in LEVELS:
        raise InputError(f"--level must be one of {', '.join(LEVELS)} (got {level!r})")
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    check_number("--hop", hop)
    out = Path(out)
    check_output_suffix(out, "--out", (".parquet",), "the export is a Parquet table")
    files = output_files(out, fmt)
    # The output rule is checked before the (long) embedding.
    for path in files.values():
        refuse_inside(path, ((cache_path, "cache"), (heads, "heads")))
        prepare_output_file(path, "--out")
        if path.exists() and not overwrite:
            raise InputError(f"{path} exists; pass --overwrite to replace it")
    checkpoint = load_heads(heads)
    cache = open_cache(cache_path)
    checkpoint.check_cache(cache)
    embedded = embed_windows(cache, checkpoint, hop=hop, quiet=quiet)
    if not embedded.windows:
        raise InputError(f"cache {cache_path} has no video long enough for one {checkpoint.window:g} s window")
    table, vectors = export_table(cache, embedded, level)
    write_export(files, table, vectors, fmt)
    return {
        "files": [str(p) for p in files.values()],
        "level": level,
        "rows": table.num_rows,
        "dim": int(vectors["audio"].shape[1]),
        "videos": len(set(table.column("video_id").to_pylist())),
        "skipped_short": embedded.skipped,
    }
