"""STUB: to be replaced by the `export` command group."""

from avfeat.index import export as old


def register(app):
    old.register(app)
