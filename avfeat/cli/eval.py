"""`avfeat eval`: the held-out scores of trained heads, as a table or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

import typer

from avfeat.cli.options import device_option, quiet_option
from avfeat.probes import KNN_VOTES


def eval_command(
    cache: Path = typer.Argument(..., help="The token cache the heads were trained on."),
    heads: Path = typer.Option(..., "--heads", help="A checkpoint folder from `avfeat train-head`."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Labels file: CSV, Parquet or JSONL with a video_id (or path) column and a label (or class) column; ground_truth.parquet of `avfeat synth` also drives localization."),
    label_column: Optional[str] = typer.Option(None, "--label-column", help="The label column (default: label, else class); without --labels, the manifest's metadata column of that name."),
    folds: Optional[int] = typer.Option(None, help="Cross-validation folds for kNN and the linear probe (folds never split a video; at most one per labelled video) [default: 5, or one per labelled video when fewer]."),
    knn_k: int = typer.Option(20, "--knn-k", help="Neighbours of the kNN classifier."),
    knn_vote: Literal[KNN_VOTES] = typer.Option("weighted", "--knn-vote", help="weighted (exp(cosine/0.07) per neighbour) or majority."),
    probe_l2: float = typer.Option(1e-3, "--probe-l2", help="L2 penalty on the linear probe's weights."),
    seed: int = typer.Option(0, help="Seed of the folds and the probe."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    device: str = device_option("heads embed the held-out videos"),
    quiet: bool = quiet_option("No progress bar."),
) -> None:
    """Retrieval R@k both ways, sync accuracy over a grid of offsets, the pointing game, and kNN / linear-probe classification."""
    from avfeat.evaluation import evaluate, format_report

    report = evaluate(heads, cache, labels, device=device, quiet=quiet, label_column=label_column, folds=folds,
                      knn_k=knn_k, knn_vote=knn_vote, probe_l2=probe_l2, seed=seed)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        for line in format_report(report):
            typer.echo(line)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
