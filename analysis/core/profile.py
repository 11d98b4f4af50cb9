"""The sensitivity profile: a tidy table, one row per (layer, sparsity), and the metadata that says how it was
measured; the error bars of every cell (``core.intervals``, at the level ``meta['confidence']``); and the
tolerance ranking read off it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.core.intervals import ERROR_BARS, SUM_NAMES, cell_intervals, check_confidence
from analysis.core.metric_table import CLASSIFICATION, default_metric, drop

DEFAULT_CONFIDENCE = 0.95
EARLY = "settled_early"  # column of a sequential scan: the cell stopped before the whole eval set


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

    @property
    def confidence(self) -> float:
        """The level of the table's intervals (``*_lo``/``*_hi``)."""
        return float(self.meta.get("confidence", DEFAULT_CONFIDENCE))

    def with_confidence(self, confidence: float | None = None) -> "SensitivityProfile":
        """This profile with every cell's intervals at ``confidence`` (default: its own level), from the sums."""
        level = check_confidence(self.confidence if confidence is None else confidence)
        meta = {**self.meta, "confidence": level}
        return SensitivityProfile(interval_columns(self.table, meta), meta)

    def drop(self, metric: str | None = None) -> pd.DataFrame:
        """The table with ``drop`` (how much worse than dense each cell is, positive = worse) and its interval
        ``drop_lo``, ``drop_hi`` (NaN where the sums do not allow one).

        A cell measured on the whole eval set drops ``baseline - value``; a cell a sequential scan settled early
        was measured on fewer samples, so its drop is the paired one on its own samples (``(lost - gained) / n``
        for accuracy), which is the same number for a whole-set cell."""
        metric = metric or self.default_metric
        df = self.table.copy()
        base = self.baseline(metric)
        df["drop"] = drop(metric, base, df[metric])
        if EARLY in df and metric in ERROR_BARS and df[EARLY].astype(bool).any():
            early = df[EARLY].astype(bool).to_numpy()
            df.loc[early, "drop"] = ERROR_BARS[metric].drop.estimate(df[early])
        for end in ("lo", "hi"):
            df[f"drop_{end}"] = df[f"{metric}_drop_{end}"] if f"{metric}_drop_{end}" in df else np.nan
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
        profile = cls(table, json.loads(meta.read_text()))
        return profile if "agreement_lo" in table else profile.with_confidence()  # written before error bars


def interval_columns(table: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """``table`` with ``{metric}_lo``, ``{metric}_hi``, ``{metric}_drop_lo`` and ``{metric}_drop_hi`` for every
    metric that has error bars, at ``meta['confidence']``, computed from the cells' sums (NaN where a cell lacks
    them). Cells a sequential scan settled early get confidence sequences, valid after stopping early."""
    out = table.drop(columns=[c for c in table if c.endswith(("_lo", "_hi"))]).copy()
    if "n" not in out or out.empty:
        return out
    sums = {c: out[c] for c in SUM_NAMES if c in out}
    accuracy = (meta.get("baseline") or {}).get("accuracy")
    if accuracy is not None and "correct" in out:
        sums["dense_correct"] = (out["n"] * float(accuracy)).round()  # the unpaired fallback of old rows
    early = out[EARLY].astype(bool).to_numpy() if EARLY in out else False
    level = float(meta.get("confidence", DEFAULT_CONFIDENCE))
    for metric in ERROR_BARS:
        if metric not in out:
            continue
        bars = cell_intervals(sums, metric, level, early, meta.get("samples"))
        known = out[metric].notna().to_numpy()
        for name, values in bars.items():
            out[name] = np.where(known, values, np.nan)
    return out


def tolerance_table(profile: SensitivityProfile, max_drop: float = 0.01, metric: str | None = None) -> pd.DataFrame:
    """Layers ranked by tolerance: the largest measured sparsity whose drop stays within ``max_drop``.

    A layer is only as tolerant as its first sparsity that breaks the limit: a drop that recovers at a
    higher sparsity does not count. ``<metric>@max`` is the metric at ``max_sparsity`` (the dense baseline when
    no sparsity is tolerated); ``max_tested`` is the largest sparsity measured. Next to that point estimate, at
    the profile's confidence level (the table's ``attrs['confidence']``): ``max_sparsity_lo``, the largest
    sparsity whose drop is within the limit at that confidence (every cell up to it has its interval's upper end
    within), and ``max_sparsity_hi``, the largest before a cell whose drop is beyond the limit at that confidence
    (NaN where the cells have no intervals).
    The eval set's sampling error puts the answer between the two.

    Example::

        >>> from analysis import ScanConfig, load_workload, scan, tolerance_table
        >>> profile = scan(load_workload("sample:digits-mlp", "sample:digits"), ScanConfig(sparsities=(0.3, 0.6, 0.9)))
        >>> list(tolerance_table(profile, max_drop=0.02).columns)
        ['layer', 'type', 'params', 'max_sparsity', 'max_sparsity_lo', 'max_sparsity_hi', 'accuracy@max', 'max_tested']
    """
    metric = metric or profile.default_metric
    df = profile.drop(metric)
    limit = max_drop + 1e-12
    rows = []
    for layer in profile.layers:
        cells = df[df["layer"] == layer].sort_values("sparsity")
        best = tolerated(cells, cells["drop"] > limit)
        worst = cells.iloc[-1]
        rows.append({
            "layer": layer,
            "type": cells["type"].iloc[0],
            "params": int(cells["params"].iloc[0]),
            "max_sparsity": best,
            "max_sparsity_lo": tolerated(cells, ~(cells["drop_hi"] <= limit), cells["drop_hi"]),
            "max_sparsity_hi": tolerated(cells, cells["drop_lo"] > limit, cells["drop_lo"]),
            f"{metric}@max": metric_at(cells, metric, best, profile.baseline(metric)),
            "max_tested": float(worst["sparsity"]),
        })
    out = pd.DataFrame(rows)
    out = out.sort_values(["max_sparsity", "params"], ascending=[True, False], kind="stable").reset_index(drop=True)
    out.attrs.update(metric=metric, max_drop=max_drop, confidence=profile.confidence)
    return out


def metric_at(cells: pd.DataFrame, metric: str, sparsity: float, dense: float) -> float:
    """``metric`` of the cell at ``sparsity``; the dense baseline when nothing is tolerated (``sparsity`` 0)."""
    hit = cells[cells["sparsity"] == sparsity]
    return float(hit[metric].iloc[0]) if sparsity > 0 and len(hit) else dense


def tolerated(cells: pd.DataFrame, breaks: pd.Series, needed: pd.Series | None = None) -> float:
    """The last sparsity of ``cells`` (ascending) before the first that ``breaks`` the limit (0 if the first
    pruned one does); NaN when a cell before the answer lacks ``needed`` (no interval)."""
    answer = 0.0
    for sparsity, broken, value in zip(cells["sparsity"], breaks, cells["drop"] if needed is None else needed):
        if broken and sparsity > 0:
            break
        if pd.isna(value):
            return float("nan")
        answer = float(sparsity)
    return answer
