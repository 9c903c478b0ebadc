"""The corpus audit: does each video's sound belong to its pictures, is it in sync, is it silent
or static; it writes the table (``avfeat.data.audit_table``) that `train-head --exclude` /
`--weight-by` and `--fix-dir` read.

- ``measure``: per-video measurements (lag curves, spread, worst windows) and
  :func:`~avfeat.index.audit.measure.audit_cache`, which makes a cache's rows;
- ``calibration``: ``p_match`` / ``p_belongs`` against unrelated pairs, ``p_sync`` on synthetic
  shifts;
- ``report``: the HTML page (``report.html.j2``);
- ``fix``: which videos a repair remuxes, and the remux;
- ``run``: :func:`~avfeat.index.audit.run.run_audit`, the library call behind `avfeat audit`.
"""
