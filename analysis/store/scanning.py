"""A scan into the run store: the one path the CLI's ``prunescope scan`` and the dashboard's Run both take.

The store finds the run of this exact scan (same weights, data and settings) and resumes it; each finished layer
is committed the moment it finishes (from the writer's thread); the finished profile closes the run. A scan
killed, cancelled or failed loses at most the layer in flight, and the next one resumes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

from analysis.core.profile import SensitivityProfile
from analysis.sensitivity.backends import Backend, prepare_for
from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.context import LayerResult
from analysis.sensitivity.driver import Progress, build_profile, run_scan
from analysis.store.runs import RunStore, ScanRun
from analysis.store.writer import LayerWriter
from analysis.workload.errors import KEPT_LAYERS
from analysis.workload.workload import Workload


@dataclass
class StoredScan:
    """A scan in the store: its run, the profile (``None`` when a complete run was reopened without computing),
    and the run it resumed (``None`` for a new run)."""

    run_id: int
    profile: SensitivityProfile | None
    resumed: ScanRun | None
    reopened: bool = False


def scan_into_store(store: RunStore, workload: Workload, config: ScanConfig, backend: Backend | None = None, *,
                    fresh: bool = False, reopen_complete: bool = False, close_store: bool = False,
                    lock: threading.RLock | None = None, on_open: Callable[[int, ScanRun | None, int], None] | None = None,
                    progress: Callable[[Progress, Callable[[], SensitivityProfile]], None] | None = None,
                    should_stop: Callable[[], bool] | None = None) -> StoredScan:
    """Scan ``workload`` into ``store`` (here, or on ``backend``: a Ray cluster) and close its run.

    ``fresh`` starts a new run even when one of this scan exists; ``reopen_complete`` returns a complete run of
    this scan without computing anything (the dashboard); ``lock`` is held while the model is used (the
    dashboard shares one model between sessions). ``on_open(run_id, resumed, layers)`` is called once the run is
    known, ``progress(p, partial)`` after each layer (``partial()`` builds the profile of every finished unit so
    far in memory, where the layer just finished may still be on its way to the store; it is only built when
    called, so a caller that draws no live view pays nothing). An exception that ends
    the scan carries ``KEPT_LAYERS``: how many finished layers the store holds.

    Example::

        >>> import tempfile
        >>> from pathlib import Path
        >>> from analysis import RunStore, ScanConfig, load_workload, scan_into_store
        >>> store = RunStore(Path(tempfile.mkdtemp()) / "runs.sqlite")
        >>> workload, config = load_workload("sample:digits-mlp", "sample:digits"), ScanConfig(sparsities=(0.5,))
        >>> first = scan_into_store(store, workload, config)
        >>> again = scan_into_store(store, workload, config, reopen_complete=True)
        >>> again.run_id == first.run_id, again.reopened, store.run(first.run_id)["status"]
        (True, True, 'complete')
    """
    backend = backend or Backend()
    writer = LayerWriter(store, None, config)
    found = writer.look_up(workload, fresh)
    if reopen_complete and found.run_id is not None and store.run(found.run_id)["status"] == "complete":
        writer.close()
        return StoredScan(found.run_id, None, None, True)
    with lock or nullcontext(), writer:
        try:
            ctx = prepare_for(workload, config, backend)
            resumed = writer.attach(workload, ctx)
            if on_open:
                on_open(writer.run_id, resumed, len(ctx.layers))
            done = dict(resumed.done) if resumed else {}

            def on_result(result: LayerResult) -> None:
                writer(result)
                done[result.layer] = result

            report = (lambda p: progress(p, lambda: build_profile(ctx, workload, done))) if progress else None
            profile = run_scan(workload, config, backend, done=dict(done), on_result=on_result, progress=report,
                               should_stop=should_stop, context=ctx)
        except BaseException as exc:
            setattr(exc, KEPT_LAYERS, writer.committed_layers())
            raise
        profile.meta["run_id"] = writer.run_id
        writer.finish(profile.meta, close_store=close_store)
    return StoredScan(writer.run_id, profile, resumed)
