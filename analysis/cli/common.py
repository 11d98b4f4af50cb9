"""What every ``prunescope`` command shares: the argument groups, validation at the door, the run store's
artifacts, and printing. Errors a user can make are ``UsageError`` (or the engine's ``ValueError``s): one line on
stderr and exit code 2 (``cli.errors``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from analysis.cli.errors import UsageError
from analysis.core.criteria import CRITERIA
from analysis.core.granularity import check_sparsity
from analysis.core.metric_table import CLASSIFICATION
from analysis.store import artifacts
from analysis.store.runs import RunStore
from analysis.workload.data import NORMALIZATIONS
from analysis.workload.workload import Workload, image_channels, load_eval_data, load_workload, seq_len_of

# ------------------------------------------------------------------------------------------- argument types


def sparsity_list(text: str) -> tuple[float, ...]:
    """``0.1,0.5,0.9``: sparsities, each in [0, 1)."""
    try:
        return tuple(check_sparsity(part.strip()) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def name_list(text: str) -> tuple[str, ...]:
    """``a,b,c``: names, blanks dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def max_sparsity(text: str) -> tuple[float | None, dict[str, float]]:
    """``0.9`` (every layer), ``fc=0.5,conv1=0.7`` (per layer) or both: ``0.9,fc=0.5``."""
    default, per_layer = None, {}
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            if "=" in part:
                name, _, value = part.partition("=")
                per_layer[name.strip()] = check_sparsity(value.strip(), f"maximum sparsity of layer {name.strip()}")
            else:
                default = check_sparsity(part, "maximum sparsity")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return default, per_layer


# ------------------------------------------------------------------------------------------ argument groups


def add_workload_args(p: argparse.ArgumentParser, data_required: bool = True) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", required=True, metavar="M",
                   help="sample:NAME, torchvision:ARCH[=weights.pth], hf:FOLDER (a local Hugging Face model), an "
                        "ONNX .onnx file, or (programs, with --trust-code) model.py:factory[=weights], a TorchScript "
                        ".pt/.ts file or a torch.export .pt2 file")
    g.add_argument("--data", required=data_required, default=None, metavar="D",
                   help="sample:digits, a tensor file (.pt/.npz with x and optional y), an image folder or a .zip "
                        "of one, random:CxHxW (label-free), or for hf: models text (.txt, .jsonl/.csv with a text "
                        "column) or token ids")
    add_data_args(g)
    add_text_args(g)
    add_trust_arg(g)


def add_data_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--count", type=int, default=None, metavar="N",
                   help="use the first N samples (image folders: N spread over the classes, seeded; random "
                        "data: how many to draw; default 256)")
    g.add_argument("--input-size", type=int, default=224, metavar="PX", help="image folders: resize and crop to PX")
    g.add_argument("--normalize", choices=NORMALIZATIONS, default="imagenet",
                   help="image folders: normalisation after scaling to [0, 1] (default imagenet)")


TASK_CHOICES = ("causal-lm", "encoder", "masked-lm", "classification")  # hf.TASKS and the alias masked-lm


def add_text_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--seq-len", type=int, default=None, metavar="T",
                   help="hf: models: tokens per sequence; a .txt file for a causal LM is cut into windows of T "
                        "tokens, lines and rows are truncated to T (default 128, or the model's positions if fewer; "
                        "commands that read a scan: the scan's)")
    g.add_argument("--task", choices=TASK_CHOICES, default=None,
                   help="hf: models: what to measure, instead of the task the config's architecture names: "
                        "causal-lm (perplexity), encoder or masked-lm (sentence-embedding cosine), classification")


def add_trust_arg(g: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    g.add_argument("--trust-code", "--trust-pickle", dest="trust_code", action="store_true",
                   help="allow models that are programs: model.py:factory, TorchScript, .pt2 or a pickled nn.Module "
                        "(loading them runs code from the file; state dicts, safetensors and ONNX never do)")


def add_pruning_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pruning")
    g.add_argument("--criterion", choices=CRITERIA, default="magnitude", help="importance criterion (default magnitude)")
    g.add_argument("--granularity", default="unstructured", metavar="G",
                   help="unstructured (default), channel, or an N:M pattern such as 2:4")


def add_target_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--target-sparsity", metavar="T", help="fraction of prunable weights to remove, in [0, 1)")
    g.add_argument("--target-params", metavar="N",
                   help="prunable weights to keep: a count (1.5M) or a percentage (30%%)")
    g.add_argument("--target-flops", metavar="N", help="FLOPs to keep: a count (20M) or a percentage (40%%)")


def target_from(args: argparse.Namespace) -> tuple[str, str]:
    """``(kind, text)`` of the target the command was given (``add_target_args``)."""
    return next((k, v) for k, v in (("sparsity", args.target_sparsity), ("params", args.target_params),
                                    ("flops", args.target_flops)) if v is not None)


def add_run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution")
    g.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    g.add_argument("--batch-size", type=int, default=128, metavar="B", help="eval batch size (default 128)")
    g.add_argument("--seed", type=int, default=0, help="seed of the random criterion and random data (default 0)")
    g.add_argument("--threads", type=int, default=None, metavar="T", help="torch CPU threads (default: torch's choice)")


def add_store_arg(p: argparse.ArgumentParser, what: str) -> None:
    g = p.add_argument_group("run store")
    g.add_argument("--no-store", action="store_true",
                   help=f"do not keep the {what} in the run store ($PRUNESCOPE_HOME/runs.sqlite; `prunescope runs "
                        "artifacts` lists what it keeps)")


# ------------------------------------------------------------------------------------------ model and data


def load_workload_from(args: argparse.Namespace, model: str | None = None, data: str | None = None,
                       count: int | None = None, seq_len: int | None = None) -> Workload:
    """The workload the command's ``--model``/``--data`` (or the given specs) name; ``seq_len`` is the one of the
    scan the command reads when ``--seq-len`` is not given."""
    return load_workload(model or args.model, data or args.data, count=args.count if count is None else count,
                         input_size=args.input_size, normalize=args.normalize, trust_code=args.trust_code,
                         seq_len=getattr(args, "seq_len", None) or seq_len, task=getattr(args, "task", None))


def load_more_data(args: argparse.Namespace, spec: str, workload: Workload, option: str):  # noqa: ANN201 - EvalData
    """More inputs for ``workload`` (calibration or training data), read as its eval set was read (an image folder
    at the same size and channels); inputs of another shape are a ``UsageError`` naming ``option``."""
    data = load_eval_data(workload.model, workload.model_spec, spec, input_size=args.input_size,
                          normalize=args.normalize, channels=image_channels(workload.input_shape),
                          seq_len=seq_len_of(workload.input_shape, workload.input_dtype))
    if tuple(data.x.shape[1:]) != tuple(workload.input_shape) and workload.task == CLASSIFICATION \
            and workload.input_dtype != "int64":
        hint = f" (an image folder is resized to --input-size: give --input-size {workload.input_shape[-1]})" \
            if Path(spec).is_dir() or spec.endswith(".zip") else ""
        raise UsageError(f"{option} {spec} has inputs of shape {list(data.x.shape[1:])}, the eval data "
                         f"{list(workload.input_shape)}{hint}")
    return data


def workload_id(workload: Workload) -> str:
    return artifacts.workload_id(workload.fingerprint(), workload.data.fingerprint())


def store_artifact(kind: str, build: Callable[[RunStore], tuple], quiet: bool = False) -> None:
    """Keep a command's result in the run store, as the dashboard does: ``build(store)`` gives ``(name, payload,
    run_id)``. Called once the command's files are written, so a store that cannot be used (its one-line
    ``StoreError``, exit code 2) never costs them."""
    with RunStore() as store:
        name, payload, run_id = build(store)
        artifact_id = artifacts.save(store, kind, name, payload, run_id)
        replaced = artifacts.replace_older(store, kind, artifact_id) if kind == artifacts.SCHEDULE else []
    if not quiet:
        note = f" (replacing the older schedule {name!r} of this model and data)" if replaced else ""
        print(f"stored as artifact {artifact_id} in {store.path}{note}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------- output


def note(text: str) -> None:
    """A note on stderr that does not stop the command."""
    print(f"prunescope: note: {text}", file=sys.stderr)


def _json_default(obj: object) -> object:
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(type(obj).__name__)


def print_json(obj: object) -> None:
    """Print one JSON object on stdout (for commands whose output scripts read)."""
    print(json.dumps(obj, default=_json_default))
