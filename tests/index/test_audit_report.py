"""The audit report as a page people read: sortable tables and figures with named axes."""

from __future__ import annotations

from html.parser import HTMLParser

import numpy as np

from avfeat.data.audit_table import AuditRow
from avfeat.index.audit.report import draw_distributions, write_report


class Page(HTMLParser):
    """The tables (their class and header cells), the cells' data-value and the inline scripts."""

    def __init__(self):
        super().__init__()
        self.tables, self.values, self.scripts, self._script = [], [], [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append({"class": attrs.get("class", ""), "heads": 0})
        elif tag == "th":
            self.tables[-1]["heads"] += 1
        elif tag == "td" and "data-value" in attrs:
            self.values.append(attrs["data-value"])
        self._script = tag == "script"

    def handle_data(self, data):
        if self._script:
            self.scripts.append(data)


def report(tmp_path) -> Page:
    rows = [AuditRow(video_id=f"v{i}", path=f"/nowhere/v{i}.mp4", duration=3.0, p_match=p, correspondence=p - 0.5,
                     offset=o, p_sync=0.9) for i, (p, o) in enumerate([(0.9, 0.0), (0.2, -0.4), (0.55, 1.2)])]
    meta = {"cache": {"path": "/c"}, "heads": {"path": "/h"}, "match_calibration": {}, "sync_calibration": {}}
    write_report(tmp_path / "r.html", rows, meta)
    page = Page()
    page.feed((tmp_path / "r.html").read_text())
    return page


def test_every_table_of_the_report_sorts_by_a_click_on_its_header(tmp_path):
    page = report(tmp_path)
    assert len(page.tables) == 2 and all("sortable" in t["class"].split() and t["heads"] >= 5 for t in page.tables), page.tables
    script = "".join(page.scripts)
    assert 'querySelectorAll("table.sortable")' in script and '"click"' in script and "parseFloat" in script
    # Cells whose text is not a plain number (percentages, "+0.40 s (p 0.90)") sort by their value.
    assert {"-0.4", "1.2", "0.0"} <= set(page.values)


def test_the_report_figures_name_both_axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3)
    draw_distributions(axes, np.array([0.1, -0.2]), np.array([0.9, 0.1]), np.array([0.0, np.nan]))
    labels = [(axis.get_xlabel(), axis.get_ylabel()) for axis in axes]
    plt.close(figure)
    assert all(x and y for x, y in labels), labels
    assert labels[2][0] == "offset (s), positive = audio late"
