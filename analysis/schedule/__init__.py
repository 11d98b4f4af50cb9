"""Schedules: per-layer sparsities, their totals (channel graph and coupled groups), allocation to a target,
prediction from a profile, calibration, measurement and sparse fine-tuning."""
