"""A lab in the run store: the one path the CLI's ``prunescope lab`` and the dashboard's Strategy lab page take.

A lab is stored as artifacts, found by its identity (``lab.config.identity``: the weights, the eval and training
data, the checkpoint and every setting that decides a number; the strategy list is not part of it, so running
another strategy on the same settings adds to the same lab):

- ``lab``: the header, one per identity: the configuration, what it ran on and the units it plans;
- ``lab-unit``: one per finished unit (strategy x phase), committed the moment the unit finishes, named
  ``<key>/<unit>``; running the lab again skips them (a killed, cancelled or failed lab loses at most the unit in
  flight) and gives the same table as an uninterrupted run;
- ``lab-state``: the model and masks a strategy's next phase starts from (``torch.save`` bytes, read back without
  running code), committed before its unit; dropped once the lab is complete.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import pandas as pd
import torch

from analysis.core.data import EvalData
from analysis.core.metric_table import default_metric
from analysis.lab.config import LabConfig, identity, identity_key, state_fingerprint
from analysis.lab.context import check_inputs
from analysis.lab.result import LabResult
from analysis.lab.runner import LabProgress, Unit, checked_strategies, plan_units, run_lab
from analysis.lab.strategies import STRATEGIES
from analysis.store import artifacts
from analysis.store.runs import RunStore, StoreError
from analysis.workload.files import load_plain
from analysis.workload.workload import Workload

LAB, UNIT, STATE = "lab", "lab-unit", "lab-state"


@dataclass
class StoredLab:
    """A lab in the store: its header artifact, its key, the result of this run and how many of its units were
    found done when it started."""

    lab_id: int
    key: str
    result: LabResult
    resumed: int


def lab_into_store(store: RunStore, workload: Workload, train: EvalData | None, config: LabConfig, *,
                   rewind: dict[str, torch.Tensor] | None = None, fresh: bool = False,
                   lock: threading.RLock | None = None, on_open: Callable[[int, int, int], None] | None = None,
                   progress: Callable[[LabProgress], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> StoredLab:
    """Run a lab into ``store``, resuming the units it already holds (``fresh``: compute them all again).

    ``on_open(lab_id, units done, units)`` is called once the lab is known; ``lock`` is held while the model is
    used (the dashboard shares one model between sessions). An exception that ends the lab leaves every finished
    unit in the store.

    Example::

        >>> import tempfile
        >>> from pathlib import Path
        >>> from analysis import LabConfig, RunStore, Target, lab_into_store, load_workload
        >>> store = RunStore(Path(tempfile.mkdtemp()) / "runs.sqlite")
        >>> workload = load_workload("sample:digits-mlp", "sample:digits")
        >>> config = LabConfig(Target("sparsity", 0.5), strategies=("unstructured",), export=False)
        >>> first = lab_into_store(store, workload, None, config)
        >>> again = lab_into_store(store, workload, None, config)
        >>> again.lab_id == first.lab_id, again.resumed, first.result.complete
        (True, 3, True)
    """
    config = config.validated()
    ident = identity(config, workload.fingerprint(), workload.data.fingerprint(),
                     train.fingerprint() if train is not None else None, state_fingerprint(rewind))
    key = identity_key(ident)
    names = plan_units(config, checked_strategies(config, train is not None), train is not None)
    check_inputs(workload, train, rewind)  # a refused input leaves no lab behind
    done = {} if fresh else stored_units(store, key)
    lab_id = _header(store, key, ident, config, workload, train, names)
    resumed = sum(1 for n in names if n in done)
    if on_open:
        on_open(lab_id, resumed, len(names))
    wid = artifacts.workload_id(ident["model_fp"], ident["data_fp"])
    with lock or nullcontext():
        result = run_lab(workload, train, config, rewind=rewind, done=done,
                         on_unit=lambda unit: save_unit(store, key, wid, unit), progress=progress,
                         should_stop=should_stop)
    if result.complete:
        _drop(store, STATE, key)
    result.meta.update(lab_id=lab_id, key=key)
    return StoredLab(lab_id, key, result, resumed)


def save_unit(store: RunStore, key: str, workload: str, unit: Unit) -> None:
    """Commit a finished unit: its state first (bytes), then its result; an older copy of either goes."""
    if unit.state is not None:
        buffer = io.BytesIO()
        torch.save(unit.state, buffer)
        _replace(store, STATE, f"{key}/{unit.name}", buffer.getvalue())
    _replace(store, UNIT, f"{key}/{unit.name}", {"workload": workload, "unit": unit.name, "result": unit.result})


def stored_units(store: RunStore, key: str) -> dict[str, Unit]:
    """The finished units of the lab ``key`` (the newest copy of each), with the states still kept."""
    units: dict[str, Unit] = {}
    for art_id, name in _named(store, UNIT, key):
        unit = name.removeprefix(f"{key}/")
        if unit not in units:
            units[unit] = Unit(unit, store.get_artifact(art_id)[1]["result"])
    for art_id, name in _named(store, STATE, key):
        unit = units.get(name.removeprefix(f"{key}/"))
        if unit is not None and unit.state is None:
            unit.state = load_plain(io.BytesIO(store.get_artifact(art_id)[1]))
    return units


def labs(store: RunStore, workload: str | None = None) -> pd.DataFrame:
    """The stored labs (of ``workload``, ``"<weights hash>:<data hash>"``, when given), newest first: ``id, name,
    units_done, units, created``."""
    have: dict[str, set[str]] = {}
    for _, name in _all(store, UNIT):
        key, _, unit = name.partition("/")
        have.setdefault(key, set()).add(unit)
    table = store.artifacts(kind=LAB)
    rows = []
    for art_id, name, created in zip(table["id"], table["name"], table["created"]):
        payload = store.get_artifact(int(art_id))[1]
        if workload is None or payload.get("workload") == workload:
            planned = payload["meta"]["units"]
            rows.append({"id": int(art_id), "name": name.rsplit(" [", 1)[0], "units": len(planned), "created": created,
                         "units_done": sum(1 for u in planned if u in have.get(payload["key"], set()))})
    return pd.DataFrame(rows, columns=["id", "name", "units_done", "units", "created"])


def open_lab(store: RunStore, lab_id: int) -> LabResult:
    """A stored lab's result from its units alone (no model needed): what it has so far.

    Example::

        >>> import tempfile
        >>> from pathlib import Path
        >>> from analysis import LabConfig, RunStore, Target, lab_into_store, load_workload, open_lab
        >>> store = RunStore(Path(tempfile.mkdtemp()) / "runs.sqlite")
        >>> workload = load_workload("sample:digits-mlp", "sample:digits")
        >>> config = LabConfig(Target("sparsity", 0.5), strategies=("2:4",), export=False)
        >>> stored = lab_into_store(store, workload, None, config)
        >>> reopened = open_lab(store, stored.lab_id)
        >>> reopened.complete, reopened.table(literature=False).loc["Global sparsity reached", "2:4 (N:M)"]
        (True, '0.5000')
    """
    info, payload = store.get_artifact(lab_id)
    if info["kind"] != LAB:
        raise StoreError(f"artifact {lab_id} is a {info['kind']}, not a lab")
    units = stored_units(store, payload["key"])
    meta = {**payload["meta"], "lab_id": int(lab_id), "key": payload["key"]}
    meta["complete"] = all(u in units for u in meta["units"])
    return LabResult(LabConfig.from_settings(payload["config"]), {n: u.result for n, u in units.items()}, meta)


def delete_lab(store: RunStore, lab_id: int) -> None:
    """Delete a lab: its header, its units and its states."""
    info, payload = store.get_artifact(lab_id)
    if info["kind"] != LAB:
        raise StoreError(f"artifact {lab_id} is a {info['kind']}, not a lab")
    for kind in (UNIT, STATE):
        _drop(store, kind, payload["key"])
    store.delete_artifact(lab_id)


# --------------------------------------------------------------------------------------------------- header


def _header(store: RunStore, key: str, ident: dict, config: LabConfig, workload: Workload, train: EvalData | None,
            names: list[str]) -> int:
    """The lab's header: kept when it plans these units already, else saved anew with every strategy it had."""
    old = [(i, store.get_artifact(i)[1]) for i, n in _all(store, LAB) if n.endswith(f"[{key}]")]
    planned = old[0][1]["meta"]["units"] if old else []
    if old and set(names) <= set(planned):
        return old[0][0]
    strategies = [s for s in STRATEGIES if s in set(config.strategies or STRATEGIES) | set(
        old[0][1]["meta"]["strategies"] if old else [])]
    units = list(dict.fromkeys(["dense", *(n for n in planned + names if n.startswith("sensitivity/")),
                                *(n for s in strategies for n in planned + names if n.startswith(f"{s}/"))]))
    meta = {"model": workload.model_spec, "data": workload.data.spec, "train": train.spec if train else None,
            "metric": config.metric or default_metric(workload.data.labelled), "strategies": strategies,
            "units": units}
    settings = {**config.settings(), "strategies": strategies}
    payload = {"workload": artifacts.workload_id(ident["model_fp"], ident["data_fp"]), "key": key,
               "identity": ident, "config": settings, "meta": meta}
    name = f"{workload.model_spec} on {workload.data.spec}: {config.target}, {config.allocation} [{key}]"
    new = store.save_artifact(LAB, name, artifacts.jsonable(payload))
    for art_id, _ in old:
        store.delete_artifact(art_id)
    return new


def _replace(store: RunStore, kind: str, name: str, payload: object) -> int:
    """Save an artifact and delete the older ones of this kind and name."""
    new = store.save_artifact(kind, name, artifacts.jsonable(payload) if not isinstance(payload, bytes) else payload)
    for art_id, other in _all(store, kind):
        if other == name and art_id < new:
            store.delete_artifact(art_id)
    return new


def _all(store: RunStore, kind: str) -> list[tuple[int, str]]:
    table = store.artifacts(kind=kind)
    return [(int(i), str(n)) for i, n in zip(table["id"], table["name"])]


def _named(store: RunStore, kind: str, key: str) -> list[tuple[int, str]]:
    """``(id, name)`` of the artifacts of ``kind`` that belong to lab ``key``, newest first."""
    return [(i, n) for i, n in _all(store, kind) if n.startswith(f"{key}/")]


def _drop(store: RunStore, kind: str, key: str) -> None:
    for art_id, _ in _named(store, kind, key):
        store.delete_artifact(art_id)
