"""Options every command spells the same way: one help text, one default, one place to change.

Each is a function, not a shared object, so that every command gets its own typer option.
"""

from __future__ import annotations

import typer


def device_option(role: str = "models run") -> typer.models.OptionInfo:
    """``--device``: where ``role`` (e.g. "the backbones embed query files")."""
    return typer.Option("auto", "--device", help=f"Where the {role}: auto (the first CUDA GPU, else the CPU), cpu, cuda, cuda:1, ...")


def quiet_option(what: str = "No progress bar.") -> typer.models.OptionInfo:
    return typer.Option(False, "--quiet", "-q", help=what)


def resume_option(what: str) -> typer.models.OptionInfo:
    return typer.Option(False, "--resume", help=what)


def overwrite_option(what: str) -> typer.models.OptionInfo:
    return typer.Option(False, "--overwrite", help=what)
