"""The ``prunescope`` command: the engine's steps, headless, for batch runs and CI.

Every command validates its arguments at the door; a wrong input ends with one line on stderr and exit
code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from analysis import __version__

EXIT_USAGE = 2


class UsageError(Exception):
    """A wrong input from the user: reported as one line, exit code 2."""


def _sparsity_list(text: str) -> tuple[float, ...]:
    from analysis.masks import check_sparsity

    try:
        return tuple(check_sparsity(part.strip()) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _add_workload_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", required=True, metavar="M",
                   help="sample:NAME, torchvision:ARCH[=weights.pth], model.py:factory[=weights], a TorchScript "
                        ".pt/.ts file or a torch.export .pt2 file")
    g.add_argument("--data", required=True, metavar="D",
                   help="sample:digits, a tensor file (.pt/.npz with x and optional y), an image folder, "
                        "or random:CxHxW (label-free)")
    g.add_argument("--count", type=int, default=None, metavar="N",
                   help="use the first N samples (random data: how many to draw; default 256)")
    g.add_argument("--input-size", type=int, default=224, metavar="PX", help="image folders: resize and crop to PX")
    g.add_argument("--normalize", choices=("imagenet", "none"), default="imagenet",
                   help="image folders: normalisation after scaling to [0, 1] (default imagenet)")
    g.add_argument("--trust-pickle", action="store_true",
                   help="allow a fully pickled nn.Module (unpickling runs code from the file)")


def _add_pruning_args(p: argparse.ArgumentParser) -> None:
    from analysis.criteria import CRITERIA

    g = p.add_argument_group("pruning")
    g.add_argument("--criterion", choices=CRITERIA, default="magnitude", help="importance criterion (default magnitude)")
    g.add_argument("--granularity", default="unstructured", metavar="G",
                   help="unstructured (default), channel, or an N:M pattern such as 2:4")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution")
    g.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    g.add_argument("--batch-size", type=int, default=128, metavar="B", help="eval batch size (default 128)")
    g.add_argument("--seed", type=int, default=0, help="seed of the random criterion and random data (default 0)")
    g.add_argument("--threads", type=int, default=None, metavar="T", help="torch CPU threads (default: torch's choice)")


def _load_workload(args: argparse.Namespace):  # noqa: ANN202
    from analysis.sources import load_workload

    return load_workload(args.model, args.data, count=args.count, input_size=args.input_size,
                         normalize=args.normalize, trust_pickle=args.trust_pickle)


# ------------------------------------------------------------------------------------------------------- scan


def _scan_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from analysis.engine import DEFAULT_SPARSITIES, ENGINES, PRECISIONS

    p = sub.add_parser("scan", help="measure every layer alone at every sparsity (a sensitivity profile)",
                       description="Prune each layer alone at each sparsity, measure accuracy, loss, agreement and "
                                   "KL against the dense model, and write DIR/sensitivity.csv and DIR/scan.json.")
    _add_workload_args(p)
    _add_pruning_args(p)
    g = p.add_argument_group("scan")
    g.add_argument("--sparsities", type=_sparsity_list, default=DEFAULT_SPARSITIES, metavar="S,S,...",
                   help="fractions to remove, each in [0, 1) (default 0.1,...,0.9; 0, the dense baseline, is added)")
    g.add_argument("--layers", type=_name_list, default=None, metavar="NAME,...", help="only these layers (default all)")
    g.add_argument("--engine", choices=tuple(ENGINES), default="fast",
                   help="scan engine: fast (default; reuses the dense prefix, same numbers) or naive (the reference)")
    g.add_argument("--precision", choices=PRECISIONS, default="exact",
                   help="float arithmetic of the pruned runs: exact (default; no TF32 on CUDA), tf32 (CUDA) or bf16")
    g.add_argument("--chunk-size", type=int, default=None, metavar="N",
                   help="fast engine: eval samples per chunk (default: batch size / number of sparsities)")
    g.add_argument("--calib-samples", type=int, default=256, metavar="N",
                   help="samples used by the taylor and activation criteria (default 256)")
    g.add_argument("--max-drop", type=float, default=0.01, metavar="D",
                   help="for the printed summary: the largest sparsity per layer within this drop (default 0.01)")
    g.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for sensitivity.csv and scan.json")
    g.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    _add_run_args(p)
    return p


def _cmd_scan(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from analysis.engine import ScanConfig
    from analysis.sensitivity import scan, tolerance_table

    workload = _load_workload(args)
    config = ScanConfig(criterion=args.criterion, granularity=args.granularity, sparsities=args.sparsities,
                        layers=args.layers, batch_size=args.batch_size, device=args.device, engine=args.engine,
                        seed=args.seed, calib_samples=args.calib_samples, precision=args.precision,
                        chunk_size=args.chunk_size).validated()
    bar = tqdm(total=None, unit="layer", disable=args.quiet or not sys.stderr.isatty(), file=sys.stderr)

    def on_progress(p) -> None:  # noqa: ANN001
        bar.total = p.total
        bar.set_postfix_str(p.layer)
        bar.update(p.done - bar.n)

    profile = scan(workload, config, progress=on_progress)
    bar.close()
    profile.save(args.out)
    for notice in profile.meta["engine"]["notices"]:
        print(f"prunescope: note: {notice}", file=sys.stderr)
    if not args.quiet:
        metric = profile.default_metric
        print(f"{workload.model_spec} on {workload.data.spec}: {len(profile.layers)} layers x "
              f"{len(config.sparsities)} sparsities, dense {metric} {profile.baseline(metric):.4f}, "
              f"{profile.meta['timings']['total_s']:.1f} s ({config.engine} engine)")
        for name, reason in profile.meta["skipped_layers"].items():
            print(f"skipped {name}: {reason}")
        print(tolerance_table(profile, max_drop=args.max_drop).to_string(index=False))
        print(f"wrote {args.out / 'sensitivity.csv'} and {args.out / 'scan.json'}")
    return 0


# ------------------------------------------------------------------------------------------------------- main


COMMANDS: dict[str, tuple[Callable, Callable]] = {
    "scan": (_scan_parser, _cmd_scan),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunescope",
        description="Measure how much accuracy each layer of a network loses when it is pruned.")
    parser.add_argument("--version", action="version", version=f"prunescope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for make_parser, handler in COMMANDS.values():
        make_parser(sub).set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    from analysis.sources import SpecError

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        return args.handler(args)
    except (UsageError, SpecError, ValueError, FileNotFoundError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"prunescope: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("prunescope: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def _json_default(obj: object) -> object:
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(type(obj).__name__)


def print_json(obj: object) -> None:
    """Print one JSON object on stdout (for commands whose output scripts read)."""
    print(json.dumps(obj, default=_json_default))


if __name__ == "__main__":
    sys.exit(main())
