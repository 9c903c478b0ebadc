"""STUB: to be replaced by the `train` command group."""

from avfeat.align import cli as old


def register(app):
    old.register(app)
