"""STUB: to be replaced by the `demo` command group."""

from avfeat import demo as old


def register(app):
    old.register(app)
