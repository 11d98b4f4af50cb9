"""Schedule: one sparsity per layer, presets, live totals and predicted accuracy, measured on demand."""

import streamlit as st

from ui import common, pending

spec = common.header("Schedule")
if not pending.available("schedule", "predict"):
    pending.arrives_with("the schedule engine (allocation and prediction in analysis/schedule.py, issue 4): one "
                         "slider per layer, presets (uniform, global magnitude, LAMP, ERK, sensitivity to a target), "
                         "live totals and the predicted accuracy on every move, and a button that measures the "
                         "schedule for real")
spec, workload, layers = common.workload_or_stop()
st.write("Schedule engine found; this page is wired when its API is merged.")
