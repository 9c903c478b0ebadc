"""STUB: to be replaced by the `index` command group."""

from avfeat.index import cli as old


def register(app):
    old.register(app)
