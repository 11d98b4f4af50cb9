"""Diagnostics: why a layer is fragile (activation shift downstream, dead neurons, BatchNorm recalibration)."""

import streamlit as st

from ui import common, pending

spec = common.header("Diagnostics")
if not pending.available("diagnostics"):
    pending.arrives_with("the diagnostics engine (analysis/diagnostics.py, issue 3): pick a layer and a sparsity "
                         "and see the activation shift of every downstream layer, the dead neurons it creates, "
                         "and how much BatchNorm recalibration recovers")
spec, workload, layers = common.workload_or_stop()
st.write("Diagnostics engine found; this page is wired when its API is merged.")
