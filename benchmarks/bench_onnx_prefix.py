"""Would prefix reuse pay on ONNX models? Measured before building it (issue 7).

    OMP_NUM_THREADS=1 python benchmarks/bench_onnx_prefix.py [--samples 128] [--repeats 3]
    OMP_NUM_THREADS=1 python benchmarks/bench_onnx_prefix.py --scans   # step (1), built: real scans

An ONNX scan today (``analysis/workload/onnx.py``) runs the whole graph for every (layer, sparsity) cell: one
``InferenceSession`` whose Conv/Gemm weights are overridable inputs. Prefix reuse would instead run the dense
graph once with the input of every layer as extra outputs, and for each layer run only a *suffix* session,
cut with ``onnx.utils.Extractor`` (``extract_model``'s engine): its inputs are the activations that the
layer's downstream nodes read from upstream (the layer's input, and skip connections), plus the layer's
weight as an overridable input; its output is the logits.

For torchvision resnet18 and mobilenet_v3_small (random init, eval mode, exported with BatchNorm folded,
inputs 3x64x64, ``--samples`` samples, one thread) this measures per layer: the full-graph cell as the scan
runs it (``OnnxModel.forward``: every weight an overridable input); the whole graph with only that layer's
weight overridable (``extract_model`` from the graph input: it separates the cost of overridable weights from
the prefix); the suffix cell; and building each session (extraction + session creation). Once per model: the
dense pass with all the layers' intermediates as extra outputs (and without them), and the extractor's setup
(shape inference of the whole graph). Every extracted session is checked to reproduce the dense logits.

Scan totals for S sparsities over L layers: today = L*S*cell_full; one session per layer =
sum(build_one + S*cell_one); prefix reuse = dense_with_intermediates + extractor_setup +
sum(build_suffix + S*cell_suffix). Medians of ``--repeats`` for every timed run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.workload.onnx import load_onnx  # noqa: E402

SPARSITIES = 9


def median_time(fn, repeats: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def export(arch: str, path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), str(path), input_names=["input"],
                      output_names=["logits"], dynamo=False, opset_version=18,
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def frontier(nodes, layer_index: int, weight: str, constants: set[str]) -> list[str]:  # noqa: ANN001
    """The activations the layer's downstream nodes read from upstream: the suffix session's inputs."""
    tainted = set(nodes[layer_index].output)
    downstream = [nodes[layer_index]]
    for node in nodes[layer_index + 1:]:
        if any(i in tainted for i in node.input):
            tainted.update(node.output)
            downstream.append(node)
    needed = []
    for node in downstream:
        for name in node.input:
            if name and name not in tainted and name != weight and name not in constants and name not in needed:
                needed.append(name)
    return needed


def session(proto, threads: int = 1):  # noqa: ANN001, ANN201
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def measure(arch: str, samples: int, repeats: int, tmp: Path) -> dict:
    import onnx
    from onnx.utils import Extractor

    path = tmp / f"{arch}.onnx"
    export(arch, path)
    model = load_onnx(path)
    x = torch.randn(samples, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    proto = onnx.load(str(path))
    graph = proto.graph
    nodes = list(graph.node)
    inits = {i.name: i for i in graph.initializer}
    constants = set(inits)  # and whatever is computed from constants alone (Constant, Identity of a bias, ...)
    for node in nodes:
        if all(i in constants for i in node.input if i):
            constants.update(node.output)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    weights = model._weights  # noqa: SLF001 - the same layers the ONNX scan prunes
    # every weight overridable (as the scan's session has them), for the extractor and the dense pass
    served = onnx.ModelProto()
    served.CopyFrom(proto)
    for w in weights:
        init = inits[w.init_name]
        served.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, init.dims))

    t = time.perf_counter()
    extractor = Extractor(onnx.shape_inference.infer_shapes(served))  # as extract_model does, once per model
    setup = time.perf_counter() - t

    cuts = {}
    for w in weights:
        index = next(i for i, n in enumerate(nodes) if w.init_name in n.input or
                     (n.op_type == "Transpose" and n.input[0] == w.init_name))
        cuts[w.init_name] = frontier(nodes, index, w.init_name, constants)
    intermediates = sorted({name for names in cuts.values() for name in names} - {"input"},
                           key=lambda n: producer.get(n, -1))
    dense_proto = onnx.ModelProto()  # the dense pass needs no overridable weight
    dense_proto.CopyFrom(proto)
    for name in intermediates:
        dense_proto.graph.output.append(extractor.value_infos[name])
    dense, constant = session(dense_proto), session(proto)
    feeds = model._feeds(x)  # noqa: SLF001
    out_names = ["logits", *intermediates]
    with torch.no_grad():
        cell_full = median_time(lambda: model(x), repeats)
    dense_plain = median_time(lambda: constant.run(["logits"], {"input": feeds["input"]}), repeats)
    dense_extra = median_time(lambda: dense.run(out_names, {"input": feeds["input"]}), repeats)
    values = dict(zip(out_names, dense.run(out_names, {"input": feeds["input"]})))
    values["input"] = feeds["input"]

    rows = []
    for w in weights:
        weight = feeds[w.init_name]
        pruned = weight * (np.abs(weight) >= np.quantile(np.abs(weight), 0.5))
        row = {"layer": w.init_name}
        for label, names in (("one", ["input"]), ("suffix", cuts[w.init_name])):
            t = time.perf_counter()
            sess = session(extractor.extract_model([*names, w.init_name], ["logits"]))
            row[f"build_{label}"] = time.perf_counter() - t
            cell_feeds = {n: values[n] for n in names}
            cell_feeds[w.init_name] = weight
            logits = sess.run(["logits"], cell_feeds)[0]
            assert np.allclose(logits, values["logits"], rtol=1e-4, atol=1e-4), f"{arch} {w.init_name} {label} differs"
            cell_feeds[w.init_name] = pruned
            row[f"cell_{label}"] = median_time(lambda: sess.run(["logits"], cell_feeds), repeats)
            row[f"inputs_{label}"] = len(names)
        rows.append(row)
    return {"arch": arch, "layers": len(weights), "nodes": len(nodes), "cell_full": cell_full,
            "dense_plain": dense_plain, "dense_extra": dense_extra, "setup": setup, "rows": rows}


def compare_scans(arch: str, samples: int, tmp: Path) -> str:
    """A real ONNX scan (3 sparsities) with one-input sessions (today's ``OnnxModel``) and with the all-inputs
    session forced, side by side: the end-to-end gain of step (1) and the largest difference in the numbers."""
    from analysis.sensitivity.config import ScanConfig
    from analysis.sensitivity.driver import scan
    from analysis.workload.onnx import OnnxModel
    from analysis.workload.workload import load_workload

    path = tmp / f"{arch}.onnx"
    export(arch, path)
    workload = load_workload(str(path), "random:3x64x64", count=samples)
    config = ScanConfig(sparsities=(0.3, 0.6, 0.9))
    one_input = OnnxModel._session_for_current_weights
    times, tables = {}, {}
    try:
        for label, pick in (("all", lambda self: (self._session, self._weights)), ("one", one_input)):
            OnnxModel._session_for_current_weights = pick
            t = time.perf_counter()
            tables[label] = scan(workload, config).table
            times[label] = time.perf_counter() - t
    finally:
        OnnxModel._session_for_current_weights = one_input
    diffs = [np.nanmax(np.abs(tables["all"][c].to_numpy(float) - tables["one"][c].to_numpy(float)))
             for c in ("agreement", "kl", "logit_cosine", "logit_rel_l2")]
    return (f"| {arch} | {len(tables['one']['layer'].unique())} | {times['all']:.1f} | {times['one']:.1f} | "
            f"{times['all'] / times['one']:.2f}x | {' / '.join(f'{d:.1g}' for d in diffs)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--archs", default="resnet18,mobilenet_v3_small")
    parser.add_argument("--scans", action="store_true",
                        help="instead: time real ONNX scans with one-input sessions vs the all-inputs session")
    args = parser.parse_args()
    if args.scans:
        print("| model | layers | scan, all-inputs session (s) | scan, one-input sessions (s) | speed-up | "
              "largest difference: agreement / kl / logit cosine / logit rel. L2 |")
        print("| --- | --- | --- | --- | --- | --- |")
        with tempfile.TemporaryDirectory() as tmp:
            for arch in args.archs.split(","):
                print(compare_scans(arch, args.samples, Path(tmp)))
        return
    import onnxruntime

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {torch.get_num_threads()} thread(s), "
          f"{args.samples} samples of 3x64x64, {SPARSITIES} sparsities")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            r = measure(arch, args.samples, args.repeats, Path(tmp))
            rows, n, full = r["rows"], len(r["rows"]), r["cell_full"]
            today = n * SPARSITIES * full
            per_layer = sum(x["build_one"] + SPARSITIES * x["cell_one"] for x in rows)
            reuse = r["dense_extra"] + r["setup"] + sum(x["build_suffix"] + SPARSITIES * x["cell_suffix"] for x in rows)
            print(f"\n### {arch}: {n} layers, {r['nodes']} nodes; full cell as the scan runs it "
                  f"{full * 1e3:.1f} ms\n")
            print("| layer | whole graph, one overridable weight / full cell | build (ms) | suffix inputs | "
                  "suffix / full cell | suffix build (ms) |")
            print("| --- | --- | --- | --- | --- | --- |")
            for x in rows:
                print(f"| {x['layer']} | {x['cell_one'] / full:.2f} | {x['build_one'] * 1e3:.0f} | "
                      f"{x['inputs_suffix']} | {x['cell_suffix'] / full:.2f} | {x['build_suffix'] * 1e3:.0f} |")
            print(f"\ndense pass (constant weights) {r['dense_plain'] * 1e3:.1f} ms, with the {n} layers' "
                  f"intermediates as extra outputs {r['dense_extra'] * 1e3:.1f} ms; extractor setup "
                  f"{r['setup'] * 1e3:.0f} ms")
            print(f"scan of {n} layers x {SPARSITIES} sparsities: today {today:.1f} s; one session per layer over "
                  f"the whole graph (only that layer's weight overridable) {per_layer:.1f} s "
                  f"(**{today / per_layer:.2f}x**); prefix reuse (suffix sessions) {reuse:.1f} s "
                  f"(**{today / reuse:.2f}x** of today, **{per_layer / reuse:.2f}x** of one session per layer)")

if __name__ == "__main__":
    main()
