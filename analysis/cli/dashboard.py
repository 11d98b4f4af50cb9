"""``prunescope dashboard``: the Streamlit dashboard (``streamlit run app.py``), installed or from a checkout."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from analysis.cli.errors import UsageError
from analysis.workload.uploads import CODE_UPLOADS_ENV

HELP = "open the dashboard (streamlit run app.py)"
DASHBOARD_PACKAGE = "prunescope_dashboard"  # app.py, pages/, ui/ and .streamlit/ as the wheel installs them


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {text!r} is not a whole number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is outside 1 to 65535")
    return value


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("dashboard", help=HELP,
                       description="Serve the Streamlit dashboard on http://127.0.0.1:PORT. Arguments after -- go to "
                                   "streamlit run unchanged (e.g. -- --server.fileWatcherType none).")
    p.add_argument("--port", type=port, default=8501, help="the port to serve on (default 8501)")
    p.add_argument("--address", default="127.0.0.1",
                   help="the address to bind (default 127.0.0.1: only this machine can connect)")
    p.add_argument("--allow-code-uploads", action="store_true",
                   help="take TorchScript and .pt2 model uploads too: they are programs, and running them runs code "
                        "from the uploaded file with this server's rights (default: ONNX and state dicts only)")
    p.add_argument("streamlit_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def dashboard_app() -> Path:
    """The dashboard's ``app.py``: the one at the top of the checkout this package lies in, else the installed one
    (``prunescope_dashboard``, shipped in the wheel). The checkout comes first so that an engine run from one
    checkout never serves the pages of another checkout installed in editable mode."""
    checkout = Path(__file__).resolve().parents[2]
    places = [checkout] if (checkout / "pyproject.toml").is_file() else []
    spec = importlib.util.find_spec(DASHBOARD_PACKAGE)
    places += [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    app = next((p / "app.py" for p in places if (p / "app.py").is_file()), None)
    if app is None:
        raise UsageError(f"the dashboard's app.py is not installed ({DASHBOARD_PACKAGE}) nor in a checkout next to "
                         "the analysis package; reinstall prunescope")
    return app


def dashboard_command(port: int = 8501, address: str = "127.0.0.1", extra: list[str] | None = None) -> list[str]:
    """The ``streamlit run app.py`` command line the dashboard command runs."""
    app = dashboard_app()
    extra = [a for a in (extra or []) if a != "--"]
    return [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(port),
            "--server.address", address, *extra]


def run(args: argparse.Namespace) -> int:
    command = dashboard_command(args.port, args.address, args.streamlit_args)
    print(f"prunescope dashboard on http://{args.address}:{args.port}", file=sys.stderr, flush=True)
    if args.allow_code_uploads:
        os.environ[CODE_UPLOADS_ENV] = "1"
        print("prunescope: warning: TorchScript and .pt2 uploads are taken; they run code from the uploaded file",
              file=sys.stderr, flush=True)
    os.chdir(Path(command[4]).parent)  # Streamlit reads .streamlit/config.toml from here
    os.execv(sys.executable, command)
    return 0  # not reached: streamlit replaces this process
