"""The facts everything shares: what each metric means and its sums, the ATen operators read, prunable layers,
the criteria and granularities, masks, the eval set and the sensitivity profile. Imports nothing of the package's
higher layers."""
