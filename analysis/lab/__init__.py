"""The strategy lab: pruning strategies compared on the user's own model, data and target, measured.

Each strategy (one small class each, registered once: ``strategies``) produces a pruned model at the target
with the allocation the user picks; the lab measures its initial drop, its recovery curve with the mask fixed,
the spread of per-layer sensitivity and the exported model's size and latency, and sets them beside the
typical ranges of the literature (``literature``). A lab run is a list of units (strategy x phase) that
``run_lab`` computes in order, taking the units already done and handing each finished unit to a sink, so the
run store (``analysis.store.labs``) makes it resumable and the faces draw its progress."""
