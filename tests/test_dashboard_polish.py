"""Rough edges of the dashboard (issue 20): offline-only assets, quiet server, texts that read right."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from streamlit.commands.page_config import _get_favicon_string

from ui import format as fmt

ROOT = Path(__file__).resolve().parent.parent


def test_the_server_runs_without_a_file_watcher():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["fileWatcherType"] == "none"


def test_the_favicon_needs_no_external_host():
    """A :material/ page icon becomes a fonts.gstatic.com favicon unless a page icon is set before navigation."""
    assert _get_favicon_string(fmt.FAVICON).startswith("emoji:")  # drawn inline by the browser
    calls = [node.func.attr for node in ast.walk(ast.parse((ROOT / "app.py").read_text()))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and node.func.attr in ("set_page_config", "navigation")]
    assert calls.index("set_page_config") < calls.index("navigation")
    tree = ast.parse((ROOT / "app.py").read_text())
    [config] = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "set_page_config"]
    assert [k.arg for k in config.keywords] == ["page_icon"]


def test_plurals_read_right():
    assert fmt.plural(1, "layer") == "1 layer"
    assert fmt.plural(21, "layer") == "21 layers"
    assert fmt.plural(1, "point") == "1 point"
    assert fmt.delta_color(0.0) == "off" and fmt.delta_color(-0.5) == "normal"
