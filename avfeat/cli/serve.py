"""STUB: to be replaced by the `serve` command group."""

from avfeat.index import serve as old


def register(app):
    old.register(app)
