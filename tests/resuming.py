"""A scan stopped after some layers and resumed from the run store, as a killed scan would be (shared by the
adaptive and sequential resume tests)."""

from __future__ import annotations

from analysis.core.profile import SensitivityProfile
from analysis.sensitivity.config import ScanConfig
from analysis.sensitivity.context import prepare
from analysis.sensitivity.driver import scan
from analysis.store.runs import RunStore
from analysis.workload.workload import Workload


def stop_and_resume(store: RunStore, workload: Workload, config: ScanConfig,
                    stop_after: int) -> tuple[int, SensitivityProfile]:
    """Scan into a new run of ``store``, stop after ``stop_after`` layers, check the store resumes exactly those,
    finish the scan from them: the run's id and the resumed profile."""
    ctx = prepare(workload, config)
    run = store.open_scan(workload, ctx)
    finished = []

    def sink(result) -> None:  # noqa: ANN001
        store.add_layer(run.id, result, ctx.config)
        finished.append(result.layer)

    scan(workload, config, on_result=sink, should_stop=lambda: len(finished) >= stop_after, context=ctx)
    again = store.open_scan(workload, prepare(workload, config))
    assert again.resumed and list(again.done) == finished
    resumed = scan(workload, config, done=again.done, on_result=lambda r: store.add_layer(run.id, r, config))
    store.finish(run.id, resumed.meta)
    return run.id, resumed
