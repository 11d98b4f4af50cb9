"""Figures (plotly) and the one self-contained HTML report of a scan, its diagnosis, schedule and export."""
