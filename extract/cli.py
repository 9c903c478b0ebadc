"""`avfeat extract` and `avfeat info`."""

import typer


def register(app: typer.Typer) -> None:
    pass
