"""Export: the current schedule as a pruned ONNX model, verified, with its size and latency next to dense."""

import streamlit as st

from ui import common, pending

spec = common.header("Export")
if not pending.available("export"):
    pending.arrives_with("the export engine (analysis/export.py, issue 5): ONNX export of the current schedule "
                         "(masked, and channel-shrunk where the granularity allows), ONNX Runtime verification, "
                         "size and latency next to the dense model, and downloads of the model, the schedule "
                         "and an HTML report")
spec, workload, layers = common.workload_or_stop()
st.write("Export engine found; this page is wired when its API is merged.")
