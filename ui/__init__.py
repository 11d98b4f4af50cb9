"""Streamlit helpers shared by ``app.py`` and ``pages/``: the workload picker state, cached loaders, uploads.

The engine (``analysis/``) never imports Streamlit; this package is the only place besides the pages that does.
"""
