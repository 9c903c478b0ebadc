"""STUB: to be replaced by the `extract` command group."""

from avfeat.extract import cli as old


def register(app):
    old.register(app)


def expand_ray_flag(args):
    return old.expand_ray_flag(args)
