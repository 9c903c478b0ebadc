"""STUB: to be replaced by the `data` command group."""

from avfeat.data import cli as old


def register(app):
    old.register(app)
