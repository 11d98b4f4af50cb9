"""Which engine parts have landed: pages whose engine is still being built say so instead of failing."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import streamlit as st

import analysis


def available(module: str, *names: str) -> bool:
    """Whether this checkout's ``analysis/<module>.py`` exists and has every function in ``names``.

    Only the package's own folder counts: an editable install of another checkout can make
    ``analysis.<module>`` importable from elsewhere, and a page must not mix two checkouts' engines.
    """
    spec = importlib.util.find_spec(f"analysis.{module}")
    home = {Path(p).resolve() for p in analysis.__path__}
    if spec is None or not spec.origin or Path(spec.origin).resolve().parent not in home:
        return False
    mod = importlib.import_module(f"analysis.{module}")
    return all(hasattr(mod, n) for n in names)


def arrives_with(what: str) -> None:
    """Say what this page will show and which engine work brings it, then end the page."""
    st.info(f"This page arrives with {what}. Until then the Sensitivity page has the scan, heatmap, curves "
            "and tolerance ranking.")
    st.page_link("pages/2_Sensitivity.py", label="Go to Sensitivity", icon=":material/thermostat:")
    st.stop()
