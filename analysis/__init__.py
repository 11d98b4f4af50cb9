"""Prunescope's engine: measure how much accuracy each layer of a network loses when it is pruned.

The package never imports Streamlit; the dashboard (``app.py``, ``pages/``), the CLI (``analysis.cli``) and the
tests all call the same functions, which take data and return data.
"""

__version__ = "0.1.0"
