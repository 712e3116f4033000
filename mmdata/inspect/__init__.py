"""mmdata.inspect: summarise, verify, plan and picture a data set; reads data, writes only reports.

Library first: ``inspect_shards``, ``verify_shards``, ``plan_records``, ``contact_sheet``,
``plot_histograms`` (imported on first use, so ``import mmdata.inspect`` stays cheap). Docs: docs/inspect.md.
"""

from __future__ import annotations

from mmdata._lazy import lazy_exports

_WHERE = {
    "inspect_shards": "mmdata.inspect.stats",
    "histograms": "mmdata.inspect.stats",
    "verify_shards": "mmdata.inspect.verify",
    "Problem": "mmdata.inspect.problems",
    "plan_records": "mmdata.inspect.plan",
    "contact_sheet": "mmdata.inspect.pictures",
    "plot_histograms": "mmdata.inspect.pictures",
    "pick_samples": "mmdata.inspect.samples",
}

__all__ = list(_WHERE)

__getattr__ = lazy_exports(__name__, _WHERE)
