"""The names uploads had on the user's machine, shown wherever the pages name an upload.

An upload is stored under ``$PRUNESCOPE_HOME/uploads/<hash>/`` (``ui.uploads``) and the workload spec and the
page address keep naming that hash-based path: the address filter (``ui.common.address_model``) accepts only
those. The original file name is only for display: kept beside the upload in ``name.txt``, reduced to a plain
file name with no markup, and never read back into a spec.
"""

from __future__ import annotations

import re
from pathlib import Path

from analysis.core.profile import SensitivityProfile
from analysis.store.runs import home

NAME_FILE = "name.txt"
MAX_NAME = 100


def safe_name(name: str) -> str:
    """``name`` as a plain file name: no folders, and nothing but letters, digits and ``._+-()`` (no markup)."""
    base = re.sub(r"[^\w.+()-]", "_", Path(name.replace("\\", "/")).name)[:MAX_NAME]
    return base if base.strip("._") else "upload"


def remember(folder: Path, name: str) -> None:
    """Keep the upload's original name beside it (the last name wins when the same bytes come again)."""
    (folder / NAME_FILE).write_text(safe_name(name), encoding="utf-8")


def _shown(match: re.Match) -> str:
    named = home() / "uploads" / match.group(1) / NAME_FILE
    try:
        name = named.read_text(encoding="utf-8").strip()
    except OSError:
        name = ""
    return safe_name(name) if name else f"uploaded:{match.group(1)}/{match.group(2)}"


def display(text: str) -> str:
    """``text`` (a spec or a message) with every stored upload path replaced by the name the file was uploaded as,
    or by ``uploaded:<hash>/<file>`` for an upload stored before names were kept; never the server's path."""
    pattern = re.escape(str(home())) + r"/uploads/([0-9a-f]{16})/(upload\.[a-z0-9]+|images(?:/[^/\s:'\"]+)*)"
    return re.sub(pattern, _shown, text)


def named_profile(profile: SensitivityProfile) -> SensitivityProfile:
    """``profile`` with its model and data named for display (the report the Export page offers names uploads
    by their names, not by the server's paths); the table is shared, not copied."""
    meta = {**profile.meta, **{k: display(str(profile.meta[k])) for k in ("model", "data") if k in profile.meta}}
    return SensitivityProfile(profile.table, meta)
