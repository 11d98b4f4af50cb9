"""A lab's result, read off its units alone (no model needed): the curves, one summary per strategy, and the
article-style table with the literature's typical ranges beside the measured values.

Every number shown is computed here, once, from the stored rows, so the table, the CLI's printout, the page and
the HTML report agree:

- ``initial``: the metric right after the final mask (the last row of the pruning phase); ``initial_drop`` is
  the dense metric minus it.
- ``final``: the metric at the end of the recovery budget; ``final_gap`` the dense metric minus it;
  ``recovery`` = (initial drop - final gap) / initial drop, the share of the drop won back (``None`` without a
  drop).
- ``recovered_step``: the first recovery step (0 = the final mask) whose drop is within ``tolerance``;
  ``recovered_epochs`` the same in epochs; ``None``: not within the budget.
- ``largest_step_drop``: the largest drop one pruning step caused (against the point just before it), over
  ``pruning_events`` steps: the drop profile.
- ``spread_std``/``spread_var``: the standard deviation and variance of the per-layer drops of a one-shot scan
  at the target (every layer pruned alone, the strategy's criterion and granularity); ``most_sensitive``.
- the exported model against the dense one: ``file_ratio``, ``gzip_ratio`` and ``speedup_b32``/``speedup_b1``
  (dense latency over pruned latency, ONNX Runtime).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.core.metric_table import drop, drop_scale
from analysis.core.profile import SensitivityProfile
from analysis.lab.config import LabConfig
from analysis.lab.literature import typical
from analysis.lab.strategies import get_strategy

CURVE_COLUMNS = ("strategy", "phase", "step", "epoch", "recovery_step", "event", "sparsity")
ROWS = {  # measured row -> its label in the table (the literature's rows share these keys)
    "sparsity": "Global sparsity reached",
    "initial_drop": "Initial drop",
    "drop_profile": "Drop profile: largest drop of one pruning step",
    "recovery": "Recovery: share of the initial drop won back",
    "recovery_epochs": "Epochs to recover within the tolerance",
    "final_gap": "Final gap to dense",
    "pattern": "Exported vs dense: file, gzip, latency (batch 32)",
    "spread": "Layer-wise sensitivity: spread of one-shot per-layer drops",
    "training": "Training steps: pruning phase + recovery",
}


@dataclass
class LabResult:
    """The units of a lab (results by unit name), its configuration and what it ran on (``meta``)."""

    config: LabConfig
    units: dict[str, dict]
    meta: dict = field(default_factory=dict)

    @property
    def strategies(self) -> list[str]:
        """The strategies whose pruning phase is done, in the lab's order."""
        return [s for s in self.meta.get("strategies", []) if f"{s}/prune" in self.units]

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete", False))

    @property
    def metric(self) -> str:
        return self.meta["metric"]

    @property
    def dense(self) -> float:
        return float(self.units["dense"]["metrics"][self.metric])

    @property
    def steps_per_epoch(self) -> int:
        return int(self.units["dense"]["steps_per_epoch"])

    def curves(self) -> pd.DataFrame:
        """Every measured point, one row per strategy and step in step order (``lab.csv``): ``strategy, phase,
        step`` (training steps so far), ``epoch``, ``recovery_step`` (steps since the final mask: negative in the
        pruning phase), ``event``, ``sparsity`` (counted from the weights) and the metrics."""
        rows = []
        for name in self.strategies:
            start = self.units[f"{name}/prune"]["steps"]
            for row in self._rows(name):
                rows.append({"strategy": name, **row, "epoch": row["step"] / max(self.steps_per_epoch, 1),
                             "recovery_step": row["step"] - start})
        df = pd.DataFrame(rows)
        if df.empty:
            return pd.DataFrame(columns=list(CURVE_COLUMNS))
        return df[list(CURVE_COLUMNS) + [c for c in df.columns if c not in CURVE_COLUMNS]]

    def _rows(self, name: str) -> list[dict]:
        recover = self.units.get(f"{name}/recover")
        return list(self.units[f"{name}/prune"]["rows"]) + (list(recover["rows"]) if recover else [])

    def summary(self) -> pd.DataFrame:
        """One row per strategy with every derived number (see the module docstring)."""
        return pd.DataFrame([self.strategy_summary(name) for name in self.strategies])

    def strategy_summary(self, name: str) -> dict:
        """The derived numbers of one strategy."""
        strategy, prune = get_strategy(name), self.units[f"{name}/prune"]
        initial = float(prune["rows"][-1][self.metric])
        out = {"strategy": name, "title": strategy.title, "family": strategy.family,
               "sparsity": prune["rows"][-1]["sparsity"], **prune.get("totals", {}), "dense": self.dense,
               "initial": initial, "initial_drop": drop(self.metric, self.dense, initial),
               "pruning_steps": int(prune["steps"]), "notes": list(prune.get("notes", []))}
        out.update(self._profile(prune["rows"]))
        out.update(self._recovery(name, initial, int(prune["steps"])))
        out.update(self._spread(strategy.scan))
        out.update(self._export(name))
        return out

    def _profile(self, rows: list[dict]) -> dict:
        before, largest, events = self.dense, 0.0, 0
        for row in rows:
            if row.get("pruning"):
                largest, events = max(largest, drop(self.metric, before, row[self.metric])), events + 1
            before = row[self.metric]
        return {"largest_step_drop": largest, "pruning_events": events}

    def _recovery(self, name: str, initial: float, start: int) -> dict:
        unit = self.units.get(f"{name}/recover")
        if unit is None:
            return {"final": None, "final_gap": None, "recovery": None, "recovered_step": None,
                    "recovered_epochs": None, "recovery_steps": 0}
        points = [(0, initial)] + [(r["step"] - start, r[self.metric]) for r in unit["rows"]]
        tol = self.config.tolerance + 1e-12
        reached = next((step for step, value in points if drop(self.metric, self.dense, value) <= tol), None)
        final = float(points[-1][1])
        gap, initial_drop = drop(self.metric, self.dense, final), drop(self.metric, self.dense, initial)
        return {"final": final, "final_gap": gap,
                "recovery": (initial_drop - gap) / initial_drop if initial_drop > 0 else None,
                "recovered_step": reached,
                "recovered_epochs": None if reached is None else reached / max(self.steps_per_epoch, 1),
                "recovery_steps": int(unit["steps"]) - start}

    def _spread(self, scan: str) -> dict:
        unit = self.units.get(scan)
        if unit is None:
            return {"spread_std": None, "spread_var": None, "most_sensitive": None, "most_sensitive_at": None,
                    "scan_sparsity": None}
        table = pd.DataFrame.from_records(unit["table"])
        at = table[np.isclose(table["sparsity"], unit["sparsity"])]
        drops = drop(self.metric, float(unit["meta"]["baseline"][self.metric]), at[self.metric].to_numpy(float))
        order = list(dict.fromkeys(table["layer"]))
        worst = str(at["layer"].iloc[int(np.argmax(drops))])
        return {"spread_std": float(np.std(drops)), "spread_var": float(np.var(drops)), "most_sensitive": worst,
                "most_sensitive_at": f"{order.index(worst) + 1} of {len(order)}", "scan_sparsity": unit["sparsity"]}

    def _export(self, name: str) -> dict:
        unit = self.units.get(f"{name}/export")
        if unit is None or unit.get("error"):
            return {"export_error": unit.get("error") if unit else None}
        dense, pruned = unit["dense"], unit["pruned"]
        latency = {(r["model"], r["batch"]): r["median_ms"] for r in unit.get("latency") or []}
        speed = {b: latency[("dense", b)] / latency[("pruned", b)] for b in (1, 32)
                 if ("dense", b) in latency and latency[("pruned", b)] > 0}
        return {"export_mode": unit["mode"], "export_passed": unit["passed"],
                "file_ratio": pruned["file_bytes"] / dense["file_bytes"],
                "gzip_ratio": pruned["gzip_bytes"] / dense["gzip_bytes"],
                "speedup_b1": speed.get(1), "speedup_b32": speed.get(32), "export_error": None}

    def scan_profile(self, scan: str) -> SensitivityProfile:
        """The one-shot scan a strategy reads (``Strategy.scan``) as a profile: every layer pruned alone."""
        return scan_profile(self.units[scan])

    # --------------------------------------------------------------------------------------------- table

    def cells(self) -> pd.DataFrame:
        """The article-style table, tidy: one row per (measured row, strategy) with ``value`` (a number where the
        row has one), ``text`` (as shown), ``typical`` (the literature's cell for the strategy's family) and
        ``place`` (``within``/``below``/``above`` its range, where both are numbers)."""
        records = []
        for s in (self.strategy_summary(name) for name in self.strategies):
            for row in ROWS:
                value, text = self._cell(row, s)
                cell = typical(row, s["family"])
                records.append({"row": row, "label": ROWS[row], "strategy": s["strategy"], "title": s["title"],
                                "value": value, "text": text, "typical": cell.text if cell else "",
                                "place": cell.place(value) if cell else None})
        return pd.DataFrame(records, columns=["row", "label", "strategy", "title", "value", "text", "typical",
                                              "place"])

    def table(self, literature: bool = True) -> pd.DataFrame:
        """The table as the article lays it out: the measured rows down, the strategies across; with
        ``literature`` each cell also shows the typical range of the strategy's family and where the value falls."""
        cells = self.cells()
        if cells.empty:
            return pd.DataFrame()
        shown = cells["text"]
        if literature:
            shown = [f"{t} [typical {ty}{': ' + p if isinstance(p, str) else ''}]" if ty else t
                     for t, ty, p in zip(cells["text"], cells["typical"], cells["place"])]
        wide = cells.assign(shown=shown).pivot(index="label", columns="title", values="shown")
        titles = list(dict.fromkeys(cells["title"]))
        return wide.reindex(index=list(ROWS.values()), columns=titles).rename_axis(index="", columns=None)

    def _cell(self, row: str, s: dict) -> tuple[float | None, str]:
        scale, unit = drop_scale(self.metric)
        pts = (lambda v: "-" if v is None else f"{v * scale:.2f} {unit}")
        if row == "sparsity":
            return s["sparsity"], f"{s['sparsity']:.4f}"
        if row == "initial_drop":
            return s["initial_drop"], pts(s["initial_drop"])
        if row == "drop_profile":
            return s["largest_step_drop"], f"{pts(s['largest_step_drop'])} ({s['pruning_events']} step" \
                                           f"{'s' if s['pruning_events'] != 1 else ''})"
        if row == "recovery":
            return s["recovery"], _recovery_text(s)
        if row == "recovery_epochs":
            return s["recovered_epochs"], self._epochs_text(s)
        if row == "final_gap":
            return s["final_gap"], pts(s["final_gap"])
        if row == "pattern":
            return None, _pattern_text(s)
        if row == "spread":
            if s["spread_std"] is None:
                return None, "-"
            return s["spread_std"], f"std {pts(s['spread_std'])}; most sensitive {s['most_sensitive']} " \
                                    f"(layer {s['most_sensitive_at']})"
        return None, f"{s['pruning_steps']} + {s['recovery_steps']}"

    def _epochs_text(self, s: dict) -> str:
        if s["final"] is None:
            return "not measured (no recovery budget)"
        if s["recovered_epochs"] is None:
            return f"not recovered in {s['recovery_steps'] / max(self.steps_per_epoch, 1):g} epochs"
        return f"{s['recovered_epochs']:.2f} ({s['recovered_step']} steps)"

    # ------------------------------------------------------------------------------------------------ files

    def to_dict(self) -> dict:
        """``lab.json``: the configuration, what it ran on, the summary and every unit's result."""
        summary = self.summary().replace({np.nan: None}).to_dict(orient="records")
        return {"config": self.config.settings(), "meta": self.meta, "summary": summary, "units": self.units}

    @classmethod
    def from_dict(cls, d: dict) -> "LabResult":
        """The result ``to_dict`` wrote."""
        return cls(LabConfig.from_settings(d["config"]), d["units"], d.get("meta", {}))


def scan_profile(unit: dict) -> SensitivityProfile:
    """The profile a scan unit's result holds."""
    return SensitivityProfile(pd.DataFrame.from_records(unit["table"]), unit["meta"])


def _recovery_text(s: dict) -> str:
    if s["final"] is None:
        return "not measured (no recovery budget)"
    if s["recovery"] is None:
        return "no drop to recover"
    return f"{100 * s['recovery']:.0f}%"


def _pattern_text(s: dict) -> str:
    if s.get("export_error"):
        return f"export failed: {s['export_error']}"
    if "file_ratio" not in s:
        return "not exported"
    speed = s.get("speedup_b32")
    latency = "" if speed is None or not math.isfinite(speed) else f", {speed:.2f}x as fast"
    return f"{s['export_mode']}: file {s['file_ratio']:.2f}x, gzip {s['gzip_ratio']:.2f}x{latency}"
