"""The ``prunescope`` command (also ``python -m analysis``): the engine's steps, headless, for batch runs and CI.

One module per command (``analysis/cli/scan.py`` ...), each with ``HELP``, ``add_parser(sub)`` and ``run(args)``:
argument parsing and printing only, the decisions are the engine's. Only the command being run is imported, so
``prunescope --help`` lists the commands without loading torch. Every command validates its arguments at the
door; a wrong input ends with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from analysis.cli.errors import EXIT_USAGE, UsageError, check_out
from analysis.core.version import __version__
from analysis.workload.errors import KEPT_LAYERS, SpecError
from analysis.workload.usercode import model_failure

COMMANDS = {  # name: one-line help (each command's own module repeats it as HELP; a test keeps them equal)
    "scan": "measure every layer alone at every sparsity (a sensitivity profile)",
    "diagnose": "why a layer is fragile: activation shift, dead neurons, BatchNorm recalibration",
    "compare": "scans with different criteria side by side, or a sequential (adaptive) scan next to a full grid",
    "schedule": "allocate per-layer sparsities from a scan to reach a global target",
    "evaluate": "apply a whole schedule and measure it (prints one JSON object)",
    "calibrate": "measure real schedules of a scan and fit how its drops combine",
    "lab": "compare pruning strategies on your model: initial drop, recovery curve, size and latency",
    "export": "export the pruned model to ONNX, verified in ONNX Runtime",
    "runs": "list, show and delete the runs and artifacts in the run store",
    "report": "one HTML report of a scan, with its diagnosis, schedule and export",
    "dashboard": "open the dashboard (streamlit run app.py)",
}
OUT_FOLDERS = {("scan", None), ("diagnose", None), ("runs", "show"), ("lab", None)}  # commands whose --out is a folder


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other error of the command."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"prunescope: error: {message} (see {self.prog} --help)\n")


def command_module(name: str) -> ModuleType:
    """The module of command ``name`` (imported now: the others are never loaded)."""
    return importlib.import_module(f"analysis.cli.{name}")


def build_parser(commands: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line parser, with the full parsers of ``commands`` (default: all of them) and a one-line entry
    for each other command."""
    parser = Parser(prog="prunescope",
                    description="Measure how much accuracy each layer of a network loses when it is pruned.")
    parser.add_argument("--version", action="version", version=f"prunescope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for name, summary in COMMANDS.items():
        if commands is None or name in commands:
            command_module(name).add_parser(sub)
        else:
            sub.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser([chosen] if chosen in COMMANDS else []).parse_args(argv)
    module = command_module(args.command)
    try:
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(args.threads)
        if getattr(args, "out", None) is not None:
            check_out(args.out, folder=(args.command, getattr(args, "runs_command", None)) in OUT_FOLDERS)
        return module.run(args)
    except (UsageError, SpecError, ValueError, FileNotFoundError, KeyError) as exc:
        message = _model_failure(args, exc) or (exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
        print(f"prunescope: error: {message}{_kept_note(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        print(f"prunescope: interrupted{_kept_note(exc)}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - only the user's model's failures become a line; ours are re-raised
        message = _model_failure(args, exc)
        if message is None:
            raise
        print(f"prunescope: error: {message}{_kept_note(exc)}", file=sys.stderr)
        return EXIT_USAGE


def _model_failure(args: argparse.Namespace, exc: BaseException) -> str | None:
    return model_failure(exc, getattr(args, "model", None) or "the model")


def _kept_note(exc: BaseException) -> str:
    kept = getattr(exc, KEPT_LAYERS, None)
    if not kept:
        return ""
    return (f"; the {kept} finished layer{'s are' if kept != 1 else ' is'} kept in the run store: run the same "
            "command again to resume")


__all__ = ["COMMANDS", "Parser", "build_parser", "main"]
