"""The sensitivity profile: a tidy table, one row per (layer, sparsity), and the metadata that says how it was
measured; and the tolerance ranking read off it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.core.metric_table import CLASSIFICATION, default_metric, drop


@dataclass
class SensitivityProfile:
    """A tidy table, one row per (layer, sparsity), and the metadata that says how it was measured."""

    table: pd.DataFrame
    meta: dict = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        return list(dict.fromkeys(self.table["layer"]))

    @property
    def labelled(self) -> bool:
        return bool(self.meta.get("labelled", self.table["accuracy"].notna().any()))

    @property
    def task(self) -> str:
        """What the scanned model's outputs are (``metric_table.TASKS``; scans made before tasks: classification)."""
        return str(self.meta.get("task", CLASSIFICATION))

    @property
    def default_metric(self) -> str:
        return default_metric(self.labelled, self.task)

    def baseline(self, metric: str) -> float:
        return float(self.meta["baseline"][metric])

    def drop(self, metric: str | None = None) -> pd.DataFrame:
        """The table with a ``drop`` column: how much worse than dense each cell is (positive = worse)."""
        metric = metric or self.default_metric
        df = self.table.copy()
        base = self.baseline(metric)
        df["drop"] = drop(metric, base, df[metric])
        return df

    def save(self, out_dir: str | Path) -> Path:
        """Write ``sensitivity.csv`` and ``scan.json`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.table.to_csv(out / "sensitivity.csv", index=False)
        (out / "scan.json").write_text(json.dumps(self.meta, indent=2, default=str) + "\n")
        return out

    @classmethod
    def load(cls, path: str | Path) -> "SensitivityProfile":
        """Read a profile folder written by ``save`` (or the ``prunescope scan`` command)."""
        p = Path(path)
        csv, meta = p / "sensitivity.csv", p / "scan.json"
        if not csv.is_file() or not meta.is_file():
            raise FileNotFoundError(f"{p} is not a scan folder: it needs sensitivity.csv and scan.json")
        table = pd.read_csv(csv, dtype={"layer": str, "type": str})  # layers named 0, 1, ... stay names
        missing = {"layer", "sparsity", "accuracy", "loss", "agreement"} - set(table.columns)
        if missing:
            raise ValueError(f"{csv} lacks the columns {', '.join(sorted(missing))}")
        return cls(table, json.loads(meta.read_text()))


def tolerance_table(profile: SensitivityProfile, max_drop: float = 0.01, metric: str | None = None) -> pd.DataFrame:
    """Layers ranked by tolerance: the largest measured sparsity whose drop stays within ``max_drop``.

    A layer is only as tolerant as its first sparsity that breaks the limit: a drop that recovers at a
    higher sparsity does not count.

    Example::

        >>> from analysis import ScanConfig, load_workload, scan, tolerance_table
        >>> profile = scan(load_workload("sample:digits-mlp", "sample:digits"), ScanConfig(sparsities=(0.3, 0.6, 0.9)))
        >>> list(tolerance_table(profile, max_drop=0.02).columns)
        ['layer', 'type', 'params', 'max_sparsity', 'accuracy@max', 'max_tested']
    """
    metric = metric or profile.default_metric
    df = profile.drop(metric)
    rows = []
    for layer in profile.layers:
        cells = df[df["layer"] == layer].sort_values("sparsity")
        tolerated = 0.0
        for _, cell in cells.iterrows():
            if cell["drop"] > max_drop + 1e-12:
                break
            tolerated = float(cell["sparsity"])
        worst = cells.iloc[-1]
        rows.append({
            "layer": layer,
            "type": cells["type"].iloc[0],
            "params": int(cells["params"].iloc[0]),
            "max_sparsity": tolerated,
            f"{metric}@max": float(worst[metric]),
            "max_tested": float(worst["sparsity"]),
        })
    out = pd.DataFrame(rows)
    return out.sort_values(["max_sparsity", "params"], ascending=[True, False], kind="stable").reset_index(drop=True)
