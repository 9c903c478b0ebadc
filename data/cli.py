"""`avfeat synth`: write a synthetic corpus (filled in by the synth module)."""

import typer


def register(app: typer.Typer) -> None:
    pass
