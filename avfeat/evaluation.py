"""`avfeat eval`: retrieval, synchronization and localization scores of trained heads.

All three are measured on the checkpoint's held-out videos, so a number here is never one the
heads were trained on:

- retrieval: R@1/5/10 and median rank of the held-out windows in both directions, instance
  level (the positive is the same video and time) and, with ground truth, class level;
- synchronization: each held-out video's audio is shifted by every offset of a grid
  (−2.0 … +2.0 s in 0.2 s steps, 21 classes) and `avfeat sync`'s estimate is rounded to the
  grid: accuracy exact and within one step;
- localization (needs the ground truth of `avfeat synth`): the pointing game. At the middle
  of each sound event, the patch whose similarity with the event's audio tokens is highest
  must fall inside the sounding object's box; reported with the share of the frame the boxes
  cover (the score of pointing at random);
- classification, with labels (``--labels FILE`` or a manifest column ``--label-column``): kNN
  and linear-probe classification of every labelled video from the heads' embeddings, per
  modality, at the video and the window level, K-fold cross-validated with folds by video
  (:mod:`avfeat.probes`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avfeat.probes import KNN_VOTES, classification, format_classification

SYNC_GRID = np.round(np.arange(-2.0, 2.0 + 1e-9, 0.2), 1)  # 21 offsets, seconds


# ---- labels ----------------------------------------------------------------------------------

LABEL_COLUMNS = ("label", "class")  # looked for in this order unless --label-column names one
LABEL_SEPARATORS = re.compile(r"[,;]")  # "dog, bark" or "dog;bark": two labels of one video
TABLE_SUFFIXES = {".csv": "CSV", ".parquet": "Parquet", ".pq": "Parquet", ".jsonl": "JSONL", ".ndjson": "JSONL", ".json": "JSONL"}


@dataclass
class Labels:
    """Each cached video's labels, from a labels file or a manifest metadata column.

    ``rows`` keeps every column of a video's row (or its metadata) for the evaluations that need
    more than labels: the synthetic corpus's ``offset`` (sync) and event boxes (localization).
    """

    source: str  # the labels file, or "manifest"
    column: str
    matched_by: str  # "video_id", "path" or "manifest"
    rows: dict[str, dict]  # video id → its row
    labels: dict[str, tuple[str, ...]]  # ok video id → its labels (never empty)
    unlabeled: list[str]  # ok videos without a row or with an empty label
    unmatched_rows: int = 0  # rows of the file that name no video of the cache

    @property
    def classes(self) -> list[str]:
        return sorted({label for labels in self.labels.values() for label in labels})

    @property
    def multi_label(self) -> bool:
        return any(len(labels) > 1 for labels in self.labels.values())

    def summary(self) -> dict:
        return {
            "source": self.source, "column": self.column, "matched_by": self.matched_by,
            "videos": len(self.labels), "unlabeled": len(self.unlabeled), "unlabeled_examples": self.unlabeled[:10],
            "unmatched_rows": self.unmatched_rows, "classes": len(self.classes), "multi_label": self.multi_label,
        }


def parse_labels(value: Any) -> tuple[str, ...]:
    """A cell → its labels: a list holds several (each item whole); a string is split at ``,``
    or ``;``; a number is one label (``3.0`` reads as ``3``); None, NaN, "" and [] are none."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(dict.fromkeys(label for label in map(_one_label, value) if label))
    if isinstance(value, str):
        return tuple(dict.fromkeys(part.strip() for part in LABEL_SEPARATORS.split(value) if part.strip()))
    label = _one_label(value)
    return (label,) if label else ()


def _one_label(value: Any) -> str:
    """One label as text; "" for a missing one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def read_table(path: Path, text_columns: tuple[str, ...] = ()) -> tuple[list[str], list[dict]]:
    """(columns, rows) of a CSV, Parquet or JSONL file; anything wrong is one line. A CSV's
    ``text_columns`` are read as text, not inferred: the id ``007`` must not become the number 7."""
    from avfeat.core.values import one_line
    from avfeat.core.errors import InputError

    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"--labels {path}: unknown format {path.suffix!r} (use .csv, .parquet or .jsonl)")
    if not path.is_file():
        raise InputError(f"--labels {path} does not exist")
    try:
        if kind == "JSONL":
            # Python's json rather than pyarrow's: a column may mix a string and a list of labels.
            rows = []
            with open(path, encoding="utf-8-sig") as handle:
                for number, line in enumerate(handle, start=1):
                    if line.strip():
                        row = json.loads(line)
                        if not isinstance(row, dict):
                            raise ValueError(f"line {number} is not a JSON object")
                        rows.append(row)
            columns = list(dict.fromkeys(key for row in rows for key in row))
            return columns, rows
        if kind == "CSV":
            import pyarrow as pa
            import pyarrow.csv as pcsv

            types = {name: pa.string() for name in text_columns}
            table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types=types))
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
    except (OSError, ValueError, UnicodeDecodeError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise InputError(f"cannot read --labels {path} as {kind}: {one_line(error)}") from None
    return table.column_names, table.to_pylist()


def _label_column(columns: list[str], wanted: str | None, where: str) -> str:
    from avfeat.core.errors import InputError

    if wanted is not None:
        if wanted not in columns:
            raise InputError(f"{where} has no column {wanted!r} (columns: {', '.join(columns) or 'none'})")
        return wanted
    found = next((name for name in LABEL_COLUMNS if name in columns), None)
    if found is None:
        raise InputError(f"{where} has no label column ('label' or 'class'; name another with --label-column); columns: {', '.join(columns) or 'none'}")
    return found


def _resolved(base: Path, value: str) -> str:
    """A path of a labels file as extract records paths: absolute, resolved; a relative one is
    taken from the labels file's folder (as extract reads its input tables); URLs as given."""
    if "://" in value:
        return value
    path = Path(value).expanduser()
    return str((path if path.is_absolute() else base / path).resolve())


def load_labels(cache, path: str | Path | None, column: str | None = None) -> Labels | None:
    """The labels of the cache's videos from ``path`` (matched by its ``video_id`` column, else by
    ``path``), or with ``path`` None from the manifest metadata ``column``; None without either.

    Raises:
        InputError: an unreadable file, a missing column, two rows for one video, or no row that
            names a cached video (one line each).
    """
    from avfeat.core.errors import InputError

    if path is None and column is None:
        return None
    ok = [record.video_id for record in cache.records(status="ok")]
    if path is None:
        present = sorted({key for record in cache.records() for key in record.metadata})
        _label_column(present, column, f"the manifest of {cache.layout.root}")
        rows = {record.video_id: dict(record.metadata) for record in cache.records()}
        source, matched_by, unmatched = "manifest", "manifest", 0
    else:
        path = Path(path)
        columns, table = read_table(path, ("video_id", "path", *LABEL_COLUMNS, *([column] if column else [])))
        column = _label_column(columns, column, f"--labels {path}")
        matched_by = "video_id" if "video_id" in columns else "path" if "path" in columns else None
        if matched_by is None:
            raise InputError(f"--labels {path} needs a 'video_id' or a 'path' column to match its rows to videos (columns: {', '.join(columns)})")
        # A path names every record of its file (the segments of one file share it).
        by_key: dict[str, list[str]] = {}
        for record in cache.records():
            by_key.setdefault(record.video_id if matched_by == "video_id" else record.path, []).append(record.video_id)
        rows, first_row, unmatched = {}, {}, 0
        for number, row in enumerate(table, start=1):
            key = row.get(matched_by)
            if key is None or key == "":
                unmatched += 1
                continue
            key = str(key).strip() if matched_by == "video_id" else _resolved(path.parent, str(key))
            if key in first_row:
                raise InputError(f"--labels {path}: rows {first_row[key]} and {number} both name {matched_by} {key}; give one row per video")
            first_row[key] = number
            videos = by_key.get(key, [])
            unmatched += not videos
            rows.update({vid: row for vid in videos})
        if not any(vid in rows for vid in ok):
            raise InputError(
                f"no row of --labels {path} ({len(table)} rows) names a video of the cache {cache.layout.root} "
                f"by {matched_by}" + (" (paths are resolved from the labels file's folder and compared in full)" if matched_by == "path" else "")
            )
        source = str(path)
    labels = {vid: parse_labels(rows[vid].get(column)) for vid in ok if vid in rows}
    labels = {vid: value for vid, value in labels.items() if value}
    if not labels:
        raise InputError(f"no video of the cache has a value in the column {column!r} of {source}")
    unlabeled = [vid for vid in ok if vid not in labels]
    return Labels(source, column, matched_by, rows, labels, unlabeled, unmatched)


def _truth(labels: Labels | None, video_id: str) -> dict | None:
    return None if labels is None else labels.rows.get(video_id)


def _number(value: Any, default: float = 0.0) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else default


def held_out_videos(split: dict, cache) -> tuple[list[str], str]:
    """(the videos eval measures, where they come from): the test videos of the input table's
    split column when training recorded some (never trained on), else the checkpoint's
    validation videos; only those in ``cache``."""
    if split.get("test_videos"):
        return [vid for vid in split["test_videos"] if vid in cache], "test videos of the input table's split column"
    return [vid for vid in split["val_videos"] if vid in cache], "the checkpoint's validation videos"


def retrieval(checkpoint, cache, cache_path, labels: Labels | None, video_ids: list[str] | None = None) -> dict:
    from avfeat.align.evaluate import held_out_scores
    from avfeat.align.metrics import both_directions

    scores, video_ids, _ = held_out_scores(checkpoint, cache_path, video_ids=video_ids)
    result = both_directions(scores)
    if labels is not None:
        # Class-level retrieval needs one class per window: single-label, every held-out video labelled.
        found = [labels.labels.get(vid, ()) for vid in video_ids]
        if all(len(value) == 1 for value in found):
            classes = np.array([value[0] for value in found])
            by_class = both_directions(scores, classes, classes)
            result["class_a2v"], result["class_v2a"] = by_class["a2v"], by_class["v2a"]
    return {key: {k: round(v, 4) for k, v in metrics.items()} for key, metrics in result.items()}


def synchronization(checkpoint, cache, video_ids, labels) -> dict:
    """Shift each held-out video's audio by every grid offset and classify the estimate."""
    from avfeat.index.sync import sync_tokens

    exact = within = total = 0
    step = SYNC_GRID[1] - SYNC_GRID[0]
    for vid in video_ids:
        record = cache.record(vid)
        truth = _truth(labels, vid)
        base = _number(truth.get("offset")) if truth else 0.0  # an offset already in the file (synth ground truth)
        audio, visual, times = cache.audio_tokens(vid), cache.visual_tokens(vid), cache.frame_times(vid)
        for k, shift in enumerate(SYNC_GRID):
            # Audio late by `shift`: every audio token is heard `shift` seconds later.
            result = sync_tokens(
                checkpoint.heads, audio, record.audio_start + shift, record.audio_rate, visual, times, record.fps,
                max_offset=float(SYNC_GRID[-1]),
            )
            predicted = int(np.clip(np.round((result.offset - base - SYNC_GRID[0]) / step), 0, len(SYNC_GRID) - 1))
            exact += predicted == k
            within += abs(predicted - k) <= 1
            total += 1
    return {"acc_exact": round(exact / total, 4), "acc_within_1": round(within / total, 4), "clips": total}


def patch_centre_in_source(patch: int, grid: tuple[int, int], geometry: dict, width: int, height: int) -> tuple[float, float]:
    """(x, y) in source-frame pixels of a patch's centre, undoing the decoder's resize and crop."""
    from avfeat.extract.media import DecodeSpec, resize_geometry

    spec = DecodeSpec(
        shortest_edge=geometry.get("shortest_edge"),
        size=tuple(geometry["size"]) if geometry.get("size") else None,
        crop=tuple(geometry["crop"]) if geometry.get("crop") else None,
    )
    resized_h, resized_w = resize_geometry(height, width, spec)
    crop_h, crop_w = spec.crop or (resized_h, resized_w)
    row, col = divmod(patch, grid[1])
    y = (row + 0.5) * crop_h / grid[0] + (resized_h - crop_h) // 2
    x = (col + 0.5) * crop_w / grid[1] + (resized_w - crop_w) // 2
    return x * width / resized_w, y * height / resized_h


def localization(checkpoint, cache, video_ids, labels) -> dict:
    """Pointing game over the sound events of the held-out videos."""
    import torch

    from avfeat.align.scores import token_map
    from avfeat.index.vectors import project_audio, project_visual

    grid = tuple(cache.config.visual_grid)
    geometry = cache.config.frame_geometry
    hits = events = 0
    shares = []
    for vid in video_ids:
        truth = _truth(labels, vid)
        if truth is None or not all(isinstance(truth.get(key), list) for key in ("event_starts", "event_ends", "boxes")):
            continue  # only the ground truth of `avfeat synth` has sound events with boxes
        record = cache.record(vid)
        times = cache.frame_times(vid)
        offset = _number(truth.get("offset"))
        for start, end, box in zip(truth["event_starts"], truth["event_ends"], truth["boxes"]):
            middle = (start + end) / 2
            frame = int(np.argmin(np.abs(times - middle)))
            if not start <= times[frame] < end:
                continue  # no frame sampled while the object was visible
            audio = cache.audio_tokens(vid, start + offset, end + offset)
            if len(audio) == 0:
                continue
            with torch.no_grad():
                values = token_map(project_audio(checkpoint.heads, audio), project_visual(checkpoint.heads, cache.visual_tokens(vid)[frame : frame + 1])[0])
            x, y = patch_centre_in_source(int(values.argmax()), grid, geometry, record.width, record.height)
            x0, y0, x1, y1 = box
            hits += x0 <= x < x1 and y0 <= y < y1
            shares.append((x1 - x0) * (y1 - y0) / (record.width * record.height))
            events += 1
    if not events:
        return {}
    return {"pointing_game": round(hits / events, 4), "box_area_share": round(float(np.mean(shares)), 4), "events": events}


DEFAULT_FOLDS = 5


def evaluate(
    heads: str | Path,
    cache_path: str | Path,
    labels_path: str | Path | None = None,
    device: str = "cpu",
    quiet: bool = True,
    label_column: str | None = None,
    folds: int | None = None,
    knn_k: int = 20,
    knn_vote: str = "weighted",
    probe_l2: float = 1e-3,
    seed: int = 0,
) -> dict:
    """The metrics of `avfeat eval` as a dict (see the module docstring); a progress bar over
    its stages unless ``quiet``. Labels come from ``labels_path`` or, without it, from the
    manifest metadata column ``label_column``; with labels, kNN and linear-probe classification
    is reported under ``"classification"`` and the labels' coverage under ``"labels"``. ``folds``
    (default: 5, or as many as there are labelled videos when fewer) may not exceed the labelled videos."""
    from tqdm import tqdm

    from avfeat.core.devices import resolve_device
    from avfeat.core.values import check_number

    from avfeat.align.checkpoint import load_checkpoint
    from avfeat.align.data import open_cache
    from avfeat.core.errors import IndexMismatchError, InputError

    if knn_vote not in KNN_VOTES:
        raise InputError(f"--knn-vote must be one of {', '.join(KNN_VOTES)} (got {knn_vote!r})")
    if (folds is not None and folds < 2) or knn_k < 1:
        raise InputError(f"--folds must be at least 2 and --knn-k at least 1 (got {folds} and {knn_k})")
    check_number("--probe-l2", probe_l2, inclusive=True)
    checkpoint = load_checkpoint(heads, device=resolve_device(device))
    cache = open_cache(cache_path)
    checkpoint.check_cache(cache)
    held_out, held_out_from = held_out_videos(checkpoint.config.split, cache)
    if not held_out:
        raise IndexMismatchError(f"none of the held-out videos of {heads} is in the cache {cache_path}")
    labels = load_labels(cache, labels_path, label_column)
    labelled = len(labels.labels) if labels is not None else 0
    if folds is None:  # the default: 5, or one per labelled video when there are fewer
        folds = max(2, min(DEFAULT_FOLDS, labelled))
    elif 2 <= labelled < folds:  # fewer than 2: classification is skipped with a note
        raise InputError(f"--folds {folds} is more than the {len(labels.labels)} labelled videos (a fold holds whole videos); give at most {len(labels.labels)}")
    stages = ["retrieval", "sync"] + (["localization", "classification"] if labels is not None else [])
    report: dict = {"held_out_videos": len(held_out), "held_out_from": held_out_from}
    if labels is not None:
        report["labels"] = labels.summary()
    with tqdm(stages, desc="eval", unit="stage", disable=quiet, dynamic_ncols=True) as bar:
        for stage in bar:
            bar.set_postfix_str(stage, refresh=True)
            if stage == "retrieval":
                report["retrieval"] = retrieval(checkpoint, cache, cache_path, labels, held_out)
            elif stage == "sync":
                report["sync"] = synchronization(checkpoint, cache, held_out, labels)
            elif stage == "localization":
                found = localization(checkpoint, cache, held_out, labels)
                if found:
                    report["localization"] = found
            else:
                from avfeat.index.export import embed_windows

                embedded = embed_windows(cache, checkpoint)
                report["classification"] = classification(embedded, labels, folds, knn_k, knn_vote, probe_l2, seed)
    return report


def format_report(report: dict) -> list[str]:
    lines = [f"held out         {report['held_out_videos']} {report['held_out_from']}"] if "held_out_from" in report else []
    lines.append("direction        R@1     R@5     R@10    median rank")
    for key, metrics in report["retrieval"].items():
        lines.append(f"{key:<16} {metrics['R@1']:<7.3f} {metrics['R@5']:<7.3f} {metrics['R@10']:<7.3f} {metrics['median_rank']:g}")
    sync = report["sync"]
    lines.append(f"sync             exact {sync['acc_exact']:.3f}, within one 0.2 s step {sync['acc_within_1']:.3f} ({sync['clips']} clips)")
    if "localization" in report:
        loc = report["localization"]
        lines.append(f"localization     pointing game {loc['pointing_game']:.3f} (boxes cover {loc['box_area_share']:.3f} of the frame; {loc['events']} events)")
    if "labels" in report:
        lab = report["labels"]
        missing = f", {lab['unlabeled']} ok videos without a label" + (f" (e.g. {', '.join(lab['unlabeled_examples'][:3])})" if lab["unlabeled"] else "")
        unmatched = f", {lab['unmatched_rows']} rows naming no cached video" if lab["unmatched_rows"] else ""
        lines.append(f"labels           {lab['column']!r} from {lab['source']} (by {lab['matched_by']}): {lab['videos']} videos, "
                     f"{lab['classes']} classes{' (multi-label)' if lab['multi_label'] else ''}{missing}{unmatched}")
    if "classification" in report:
        lines.extend(format_classification(report["classification"]))
    return lines
