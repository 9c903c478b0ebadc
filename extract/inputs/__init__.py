"""Turning the INPUT argument of `avfeat extract` into media inputs, and giving each its id.

The id rule (README "Video ids"):

- an input table's ``id`` column wins;
- otherwise the id is the file's stem plus 64 bits of a hash of its bytes (its size, first and
  last 256 KiB), so it does not change when the dataset is moved, copied or remounted, and two
  files of one name in different folders get different ids;
- a file that cannot be read has an id from its absolute path (it has no bytes to hash).

Two inputs with one id are never silently merged: identical files (compared byte by byte) are
extracted once and reported as duplicates; different files are reported as an id collision
and not extracted. A file whose size or mtime differs from what the cache recorded for its
path is reported as changed, and extracted again with ``--refresh``.

Paths may also be URLs (``s3://``, ``gs://``, ``http(s)://``; ``file://`` names a local path) and
WebDataset shards (tar files of ``KEY.mp4`` + ``KEY.json`` samples), whose samples are named
``<tar>#<member>``. Their bytes are read through ``extract/sources/``; a remote file gets the
id its local copy would get (the same bytes are hashed), and a sample's id is its KEY.

Modules: ``items`` (``MediaInput``, file kinds, entries of lists and tables), ``tables`` (input
tables and dataset layouts), ``shards`` (WebDataset samples), ``listing`` (``list_inputs``: what
INPUT names, brace patterns), ``ids`` (``assign_ids``). This package's namespace is their public API.
"""

from avfeat.extract.inputs.ids import IdPlan, assign_ids, content_key, resolve_paths, video_id
from avfeat.extract.inputs.items import LIST_EXTENSIONS, MEDIA_EXTENSIONS, SHARD_SUFFIX, TABLE_EXTENSIONS, MediaInput, local_path
from avfeat.extract.inputs.listing import expand_braces, list_inputs
from avfeat.extract.inputs.tables import LAYOUTS, from_layout

__all__ = [
    "LAYOUTS", "LIST_EXTENSIONS", "MEDIA_EXTENSIONS", "SHARD_SUFFIX", "TABLE_EXTENSIONS", "IdPlan", "MediaInput",
    "assign_ids", "content_key", "expand_braces", "from_layout", "list_inputs", "local_path", "resolve_paths",
    "video_id",
]
