"""The shared command-line helpers, under the names the index tests use."""

from avfeat.testing import TINY_MODELS as TINY  # noqa: F401
from avfeat.testing import run_avfeat as avfeat  # noqa: F401
