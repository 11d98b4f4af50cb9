"""Scans of one model with different criteria, side by side cell by cell: which criterion prunes each layer best."""

from __future__ import annotations

import pandas as pd

from analysis.core.profile import SensitivityProfile


def compare_criteria(profiles: list[SensitivityProfile], metric: str | None = None) -> pd.DataFrame:
    """Several profiles (``SensitivityProfile``, scans with different criteria) side by side.

    One row per (layer, sparsity) that every profile measured; one column per criterion with its drop in
    ``metric`` (positive = worse than dense), then ``best`` (the criterion with the smallest drop) and
    ``spread`` (largest minus smallest drop). Profiles of the same criterion with different granularities
    are labelled ``criterion/granularity``.

    Example::

        >>> from analysis import ScanConfig, compare_criteria, load_workload, scan
        >>> workload = load_workload("sample:digits-mlp", "sample:digits")
        >>> profiles = [scan(workload, ScanConfig(criterion=c, sparsities=(0.5,))) for c in ("magnitude", "random")]
        >>> list(compare_criteria(profiles).columns)
        ['layer', 'sparsity', 'magnitude', 'random', 'best', 'spread']
    """
    if len(profiles) < 2:
        raise ValueError(f"comparing criteria needs at least two profiles, got {len(profiles)}")
    metric = metric or profiles[0].default_metric
    labels = [str(p.meta.get("criterion", f"profile{i}")) for i, p in enumerate(profiles)]
    if len(set(labels)) < len(labels):
        labels = [f"{lab}/{p.meta.get('granularity', '?')}" for lab, p in zip(labels, profiles)]
    if len(set(labels)) < len(labels):
        raise ValueError(f"the profiles do not differ in criterion or granularity: {', '.join(labels)}")
    frames = []
    for label, profile in zip(labels, profiles):
        df = profile.drop(metric)[["layer", "sparsity", "drop"]].rename(columns={"drop": label})
        frames.append(df.set_index(["layer", "sparsity"]))
    wide = pd.concat(frames, axis=1, join="inner").reset_index()
    if wide.empty:
        raise ValueError("the profiles share no (layer, sparsity) cell; scan the same layers and sparsities")
    drops = wide[labels]
    wide["best"] = drops.idxmin(axis=1)
    wide["spread"] = drops.max(axis=1) - drops.min(axis=1)
    wide.attrs["metric"] = metric
    return wide
