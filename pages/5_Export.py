"""Export: the schedule as a pruned ONNX model, verified in ONNX Runtime, with its size and latency next to dense."""

import json
import time

import pandas as pd
import streamlit as st

from analysis.core.batchnorm import has_batchnorm
from analysis.core.granularity import parse_granularity
from analysis.core.metric_table import HIGHER_IS_BETTER, METRICS, applies, metric_label
from analysis.deploy.export import (
    EXPORTERS,
    VerificationError,
    accuracy_line,
    export,
    format_bytes,
    size_table,
    speedups,
)
from analysis.report.html import build_report
from analysis.schedule.prune import resolve_schedule
from analysis.store.artifacts import dense_cache
from analysis.workload.onnx import OnnxModel
from ui import artifacts, common, runs, schedules, upload_names
from ui import format as fmt
from ui.common import fingerprints, prunescope_home

spec = common.header("Export")
spec, workload, layers = common.workload_or_stop()

choices = {}
tuned = schedules.current_schedule(spec)
if tuned is not None and tuned[0].sparsities:
    choices["current (from the Schedule page)"] = tuned
known = {r.run_id for r in runs.list_runs(spec)}
for name, saved in schedules.list_saved(spec).items():
    run_id = saved.meta.get("run_id")
    choices[f"saved: {name}"] = (saved, runs.load_run(run_id) if run_id in known else None)
if not choices:
    if tuned is not None:
        st.info("The schedule on the Schedule page prunes nothing, so there is nothing to export: apply a preset "
                "or move a slider there first.")
    else:
        st.info("No schedule yet: tune one on the Schedule page (or save one there), then export it here.")
    st.page_link("pages/4_Schedule.py", label="Go to Schedule", icon=":material/tune:")
    st.stop()

label = st.selectbox("Schedule to export", list(choices))
schedule, profile = choices[label]
channel = parse_granularity(schedule.granularity).structured
cuttable = channel or parse_granularity(schedule.granularity).coupled  # channels, or heads and neurons
st.caption(f"{fmt.plural(len(schedule.sparsities), 'layer')} pruned · {schedule.criterion} criterion · "
           f"{schedule.granularity} granularity · {schedule.meta.get('method') or schedule.meta.get('source', '')}")
c1, c2, c3, c4 = st.columns([3, 2, 2, 2])  # the shrink box's label fits its column
shrink = c1.checkbox("Shrink: remove pruned units", value=cuttable, disabled=not cuttable,
                     help="the file really has fewer channels, attention heads or MLP neurons" if cuttable else
                     "needs channel, heads or neurons granularity; this schedule is exported masked (zeros in the "
                     "weights)")
has_bn = has_batchnorm(workload.model)
bn = c2.checkbox("Recalibrate BatchNorm", value=has_bn, disabled=not has_bn)
exporter = c3.selectbox("Exporter", ["torchscript", "dynamo", "auto"],
                        help=f"torch.onnx exporter ({', '.join(EXPORTERS)}): torchscript is fast on small models,"
                        " dynamo (torch.export) keeps parameter names")
timing = c4.checkbox("Measure latency", value=True,
                     help="ONNX Runtime CPU latency, dense vs pruned, batch 1 and 32 (less where 32 would take long)")
if channel:
    _, resolved = resolve_schedule(schedule, schedules.accountant_for(spec, schedule, profile))
    if resolved:
        st.info("This schedule is resolved to the model's coupled groups before export (Measure and the Schedule "
                "page's totals count the same):\n\n" + "\n".join(f"- {note}" for note in resolved))

if st.button("Export", type="primary"):
    folder = prunescope_home() / "exports" / time.strftime("%Y%m%d-%H%M%S")
    try:
        with st.status("Exporting: prune, write ONNX, verify in ONNX Runtime, measure size and latency ...",
                       expanded=False) as status, common.holding(spec):
            report = export(workload.model, schedule, workload.data, folder / "model.onnx",
                            shrink_channels=shrink and cuttable, bn_recalibrate=bn, model_spec=spec.model,
                            exporter=exporter, measure_latency=timing, repeats=10,
                            dense_cache=dense_cache(fingerprints(spec)[0]))
            (folder / "model.export.json").write_text(json.dumps(report.to_dict(), indent=1, default=str))
            status.update(label=f"Exported in {sum(report.seconds.values()):.1f} s", state="complete")
    except (ValueError, VerificationError) as exc:
        st.error(f"The export failed: {' '.join(str(exc).split())}")
    except Exception as exc:  # noqa: BLE001 - an exporter can fail in many ways; the page says how and stays up
        st.error(f"The export failed: {common.load_error(exc)}")
    else:
        artifact_id = artifacts.save(artifacts.EXPORT, artifacts.export_name(label, report),
                                     artifacts.export_payload(spec, label, report), run_id=schedule.meta.get("run_id"))
        st.session_state["export"] = {"workload": spec.key, "label": label, "report": report, "html": None,
                                      "artifact": artifact_id}

stored = artifacts.listed(artifacts.EXPORT, spec)
done = st.session_state.get("export")
if (not done or done["workload"] != spec.key) and stored:
    done = st.session_state["export"] = {"workload": spec.key, "label": stored[0].payload["label"], "html": None,
                                         "report": artifacts.export_from(stored[0].payload), "artifact": stored[0].id}
if stored:
    with st.expander(f"Stored exports of this workload ({len(stored)})"):
        by_id = {a.id: a for a in stored}
        c1, c2, c3 = st.columns([3, 1, 1], vertical_alignment="bottom")
        picked = c1.selectbox("Stored export", list(by_id), format_func=lambda i: f"{by_id[i].created} · "
                              f"{by_id[i].name}", index=list(by_id).index(done["artifact"]) if done.get("artifact")
                              in by_id else 0)
        if c2.button("Open", help="show this export again (nothing is recomputed)"):
            chosen = by_id[picked]
            done = st.session_state["export"] = {"workload": spec.key, "label": chosen.payload["label"], "html": None,
                                                 "report": artifacts.export_from(chosen.payload), "artifact": picked}
        if c3.button("Delete", help="remove the stored export (the files on disk stay)"):
            artifacts.delete(picked)
            if done and done.get("artifact") == picked:
                st.session_state.pop("export", None)
            st.rerun()
if not done or done["workload"] != spec.key:
    st.info("Pick the options and press Export (a few seconds on the sample).")
    st.stop()
report = done["report"]
if done["label"] != label:
    st.caption(f"Showing the last export ({done['label']}); press Export for the schedule above.")

passed = all(v.passed for v in report.verifications)
main = report.verifications[0]
pair = fmt.verification_pair(isinstance(workload.model, OnnxModel))
q = report.quality
task = q.get("task") or workload.data.task
agree = f", {metric_label('agreement', task).removesuffix(' with dense')} {main.top1_agreement:.4f}" \
    if applies("agreement", task) else ""
text = (f"{pair[0].upper()}{pair[1:]} on {main.samples} samples: max abs diff {main.max_abs:.3g}, max rel diff "
        f"{main.max_rel:.3g} (tolerance {main.tolerance:g}){agree}")
(st.success if passed else st.error)(f"Verification {'passed' if passed else 'FAILED'}. {text}.")
checks = pd.DataFrame([v.to_dict() for v in report.verifications])
checks = checks.rename(columns={"top1_agreement": metric_label("agreement", task).removesuffix(" with dense")}) \
    if applies("agreement", task) else checks.drop(columns="top1_agreement")
st.dataframe(checks, hide_index=True, width="stretch")

st.caption(accuracy_line(q))
cols = st.columns(4)
first = next((m for m in METRICS if q.get(f"pruned_{m}") is not None or q.get(m) is not None), None)
if first is not None and q.get(f"pruned_{first}") is not None:  # measured against the labels: dense and exported
    dense_value, value = q[f"dense_{first}"], q[f"pruned_{first}"]
    cols[0].metric(f"dense {metric_label(first, task)}", f"{dense_value:.4g}", help=f"on {q['samples']} samples")
    cols[1].metric(f"exported {metric_label(first, task)}", f"{value:.4g}", f"{value - dense_value:+.4g}",
                   delta_color=fmt.delta_color(value - dense_value, 4,
                                               "normal" if HIGHER_IS_BETTER[first] else "inverse"),
                   help=f"the ONNX file's own outputs in ONNX Runtime, on {q['samples']} samples")
elif first is not None:  # measured against the dense model
    cols[0].metric(metric_label(first, task), f"{q[first]:.4f}", help=f"on {q['samples']} samples")
if report.kept:
    cols[2].metric("layer weights kept", f"{report.kept['weights'] / report.kept['weights_total']:.4f}",
                   help=f"{report.kept['weights']:,} of {report.kept['weights_total']:,} prunable weights (non-zero, "
                   f"as stored in the file); FLOPs kept {report.kept['flops'] / report.kept['flops_total']:.4f}")
size_change = report.pruned.file_bytes - report.dense.file_bytes
cols[3].metric("file size", format_bytes(report.pruned.file_bytes), f"{format_bytes(size_change)} vs dense",
               delta_color=fmt.delta_color(size_change, 0, "inverse"))

st.subheader("Size and latency next to the dense model")
st.dataframe(size_table(report), hide_index=True, width="stretch")
if report.latency is not None:
    st.dataframe(speedups(report.latency), hide_index=True, width="stretch")
    st.caption(f"ONNX Runtime CPU latency in ms: median (interquartile range) of interleaved runs, {report.threads} "
               "thread(s). A speed-up is called one only when the two ranges do not overlap. Unstructured zeros save "
               "bytes after compression, not time; removed channels save both.")
for note in report.notes:
    st.warning(note)
with st.expander("Per-layer detail"):
    st.dataframe(report.layers, hide_index=True, width="stretch")

if done["html"] is None and profile is not None:
    meta = report.schedule.meta
    asked = (schedule.criterion, schedule.granularity)
    same = (profile.meta.get("criterion"), profile.meta.get("granularity")) == asked
    if "totals" not in meta and same:
        meta["totals"] = schedules.accountant(spec, profile).totals(schedule).fractions()
    diagnosis = st.session_state.get("diagnosis")
    diagnosis = diagnosis["result"] if diagnosis and diagnosis["cell"][0] == spec.key else None
    done["html"] = build_report(upload_names.named_profile(profile), diagnosis=diagnosis, schedule=report.schedule,
                                export=report, title=f"Prunescope report: {spec.label}")
c1, c2, c3 = st.columns(3)
if report.onnx_path.is_file():
    c1.download_button("Download the ONNX model", report.onnx_path.read_bytes(), "model.onnx",
                       "application/octet-stream", on_click="ignore", type="primary")
else:
    c1.caption(f"{report.onnx_path} is gone; press Export to write it again.")
schedule_text = report.schedule_path.read_text() if report.schedule_path.is_file() else \
    json.dumps(report.schedule.to_dict(), indent=2)
c2.download_button("Download the schedule", schedule_text, "schedule.json", "application/json", on_click="ignore")
if done["html"] is not None:
    c3.download_button("Download the HTML report", done["html"], "prunescope-report.html", "text/html",
                       on_click="ignore")
else:
    c3.caption("The sensitivity run this schedule came from is gone, so no report.")
st.caption(f"Written to {report.onnx_path.parent}")
