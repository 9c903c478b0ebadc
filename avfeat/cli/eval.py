"""STUB: to be replaced by the `eval` command group."""

from avfeat import evaluation as old


def register(app):
    old.register(app)
