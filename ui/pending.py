"""Which engine parts have landed: pages whose engine is still being built say so instead of failing."""

from __future__ import annotations

import importlib

import streamlit as st


def available(module: str, *names: str) -> bool:
    """Whether ``analysis.<module>`` exists and has every function in ``names``."""
    try:
        mod = importlib.import_module(f"analysis.{module}")
    except ModuleNotFoundError:
        return False
    return all(hasattr(mod, n) for n in names)


def arrives_with(what: str) -> None:
    """Say what this page will show and which engine work brings it, then end the page."""
    st.info(f"This page arrives with {what}. Until then the Sensitivity page has the scan, heatmap, curves "
            "and tolerance ranking.")
    st.page_link("pages/2_Sensitivity.py", label="Go to Sensitivity", icon=":material/thermostat:")
    st.stop()
