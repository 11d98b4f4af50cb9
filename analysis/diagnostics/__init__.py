"""Why a pruned layer hurts: activation shift, dead units and BatchNorm recalibration gains of one cell, and scans
with different criteria side by side."""
