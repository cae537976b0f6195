"""Progress bars: one rule for every long job; and the mark on per-item skip reports.

A bar is drawn when the caller asks for progress *and* stderr is a terminal, so
an interactive run shows it while a log file, a CI log or a pipe gets no
carriage-return noise (tqdm's ``disable=None``). ``progress=False`` (``--json``,
library calls from tests) never draws one.
"""

from __future__ import annotations


def bar_disable(progress: bool) -> bool | None:
    """tqdm's ``disable`` for a job that shows progress when ``progress`` is true: None (tqdm then
    draws only on a terminal) or True."""
    return None if progress else True


#: set (``extra``) on the log record of each item a batch skips, so that a caller that reports
#: the items itself (a CLI command) can drop these records and keep the batch's summary line
ITEM_REPORT = "productlens_item_report"
