"""Pages whose engine has not landed yet say what they will show and which work brings it."""

from __future__ import annotations

import pytest
from app_support import app, assert_clean, texts

from ui import pending


@pytest.mark.parametrize("page,engine,issue", [
    ("diagnostics", ("diagnostics", "diagnose"), "issue 3"),
])
def test_pending_page_names_the_engine_it_waits_for(page, engine, issue):
    if pending.available(*engine):
        pytest.skip(f"analysis.{engine[0]} has landed; the page's own tests cover it")
    at = app(page)
    assert_clean(at)
    assert issue in texts(at.info)


def test_available_checks_the_module_and_its_functions():
    assert pending.available("sensitivity", "scan", "tolerance_table")
    assert not pending.available("sensitivity", "no_such_function")
    assert not pending.available("no_such_module")
