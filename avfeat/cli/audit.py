"""STUB: to be replaced by the `audit` command group."""

from avfeat.index import audit as old


def register(app):
    old.register(app)
