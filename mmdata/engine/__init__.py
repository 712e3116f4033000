"""Where per-record work runs: ``local`` (a process pool on this machine) or ``ray`` (tasks on a Ray
cluster). Both give an ordered map, results in submission order, so output never depends on the engine.

    with open_engine("ray", workers=None, ray_address="auto") as eng:
        for result in eng.map(fn, items):   # fn and items picklable; fn a module-level function
            ...
"""

from __future__ import annotations

from mmdata.engine.base import Engine, LocalEngine, open_engine

__all__ = ["Engine", "LocalEngine", "open_engine"]
