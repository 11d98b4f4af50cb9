"""Property-based tests (hypothesis) over masks, schedules and spec strings, and a bounded fuzz run over the
spec parsers and the schedule loader: bad input only ever raises the documented, clear errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from analysis.core.granularity import is_nm, parse_granularity
from analysis.core.masks import applied, make_mask, make_masks
from analysis.schedule.schedule import Schedule, ScheduleError
from analysis.workload.data import load_data
from analysis.workload.errors import SpecError
from analysis.workload.models import load_model

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

shapes = st.one_of(
    st.tuples(st.integers(1, 12), st.integers(1, 12)),
    st.tuples(st.integers(1, 8), st.integers(1, 6), st.integers(1, 3), st.integers(1, 3)),
)
sparsity = st.floats(0.0, 0.999, allow_nan=False)


def _scores(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


@FAST
@given(shape=shapes, s=sparsity, seed=st.integers(0, 2**16))
def test_unstructured_mask_removes_exactly_the_rounded_count_of_lowest_scores(shape, s, seed) -> None:
    scores = _scores(shape, seed)
    mask = make_mask(scores, s, "unstructured")
    removed = int((~mask).sum())
    assert mask.shape == scores.shape and removed == round(s * scores.numel())
    if 0 < removed < scores.numel():
        assert scores[~mask].max() <= scores[mask].min()
    assert torch.equal(mask, make_mask(scores.clone(), s, "unstructured"))


@FAST
@given(shape=shapes, s=sparsity, seed=st.integers(0, 2**16))
def test_channel_mask_removes_whole_output_channels(shape, s, seed) -> None:
    mask = make_mask(_scores(shape, seed), s, "channel")
    per_channel = mask.reshape(shape[0], -1)
    assert ((per_channel.all(dim=1)) | (~per_channel).all(dim=1)).all()
    assert int((~per_channel.all(dim=1)).sum()) == round(s * shape[0])


@FAST
@given(rows=st.integers(1, 6), groups=st.integers(1, 4), nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (4, 8)]),
       seed=st.integers(0, 2**16))
def test_nm_mask_keeps_n_of_every_m(rows, groups, nm, seed) -> None:
    n, m = nm
    scores = _scores((rows, groups * m), seed)
    mask = make_mask(scores, 1 - n / m, f"{n}:{m}")
    assert is_nm(scores * mask, n, m)
    assert int(mask.sum()) == rows * groups * n


@FAST
@given(shape=shapes, sparsities=st.lists(sparsity, min_size=1, max_size=4), seed=st.integers(0, 2**16))
def test_masks_are_nested_and_applied_restores_bit_exactly(shape, sparsities, seed) -> None:
    scores = _scores(shape, seed)
    ordered = sorted(sparsities)
    masks = make_masks(scores, ordered, "unstructured")
    for lower, higher in zip(masks, masks[1:]):
        assert not (higher & ~lower).any()
    model = torch.nn.Linear(shape[1], shape[0]) if len(shape) == 2 else torch.nn.Conv2d(shape[1], shape[0], shape[2:])
    with torch.no_grad():
        model.weight.copy_(scores - 0.5)
    before = model.weight.detach().clone()
    with applied(model, {"weight": masks[-1]}):
        assert (model.weight[~masks[-1]] == 0).all()
    assert torch.equal(model.weight, before)


names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)


@FAST
@given(spars=st.dictionaries(names, sparsity, max_size=6), criterion=st.sampled_from(["magnitude", "l2", "random"]),
       gran=st.sampled_from(["unstructured", "channel"]), yaml_file=st.booleans())
def test_schedules_round_trip_through_their_files(tmp_path_factory, spars, criterion, gran, yaml_file) -> None:
    schedule = Schedule(spars, criterion, gran, {"note": "x"})
    path = tmp_path_factory.mktemp("sched") / ("s.yaml" if yaml_file else "s.json")
    loaded = Schedule.load(schedule.save(path))
    assert loaded.sparsities == schedule.sparsities
    assert (loaded.criterion, loaded.granularity) == (criterion, gran)
    assert Schedule.from_dict(schedule.to_dict()).to_dict() == schedule.to_dict()


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(d=st.one_of(json_values, st.fixed_dictionaries({"sparsities": json_values}, optional={
    "criterion": json_values, "granularity": json_values, "meta": json_values})))
def test_fuzz_schedule_from_any_data_only_raises_schedule_error(d) -> None:
    try:
        schedule = Schedule.from_dict(d)
    except ScheduleError:
        return
    assert all(0.0 <= v < 1.0 for v in schedule.sparsities.values())


@FUZZ
@given(raw=st.binary(max_size=200), suffix=st.sampled_from([".json", ".yaml", ".yml"]))
def test_fuzz_schedule_loader_on_arbitrary_bytes(tmp_path_factory, raw, suffix) -> None:
    path = tmp_path_factory.mktemp("fuzz") / f"s{suffix}"
    path.write_bytes(raw)
    try:
        Schedule.load(path)
    except ScheduleError:
        pass


@FAST
@given(text=st.text(max_size=12))
def test_granularity_parser_only_raises_value_error(text) -> None:
    try:
        g = parse_granularity(text)
    except ValueError as exc:
        assert repr(text) in str(exc)
        return
    assert str(g) == text or str(g) == f"{g.n}:{g.m}"


spec_text = st.one_of(
    st.text(max_size=30),
    st.builds(lambda a, b: f"{a}:{b}", st.sampled_from(["sample", "torchvision", "random", "x.py", "file"]),
              st.text(max_size=16)),
    st.builds(lambda dims: "random:" + "x".join(dims), st.lists(st.text("0123456789x-+ ", max_size=6), max_size=5)),
)


@pytest.fixture()
def empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fuzzed specs are resolved in an empty folder, so no text can name a real file."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@FUZZ
@given(text=spec_text)
def test_fuzz_spec_parsers_only_raise_spec_errors(empty_cwd, text) -> None:
    assume(not text.strip().startswith(("/", "~", "\\")) and ".." not in text)
    for loader in (load_model, lambda t: load_data(t, count=2)):
        try:
            loader(text)
        except SpecError as exc:
            assert str(exc)


def test_spec_parser_refuses_huge_random_shapes() -> None:
    with pytest.raises(SpecError, match="more than the limit"):
        load_data("random:3x100000x100000")
    assert math.prod(load_data("random:2x3", count=5).x.shape) == 30
    with pytest.raises(SpecError, match="NUL"):
        load_model("model\x00.pt")


@FUZZ
@given(text=st.text(st.sampled_from("0123456789.,-+e nainf"), max_size=20))
def test_fuzz_sparsity_list_parser(text) -> None:
    import argparse

    from analysis.cli.common import sparsity_list as _sparsity_list

    try:
        values = _sparsity_list(text)
    except argparse.ArgumentTypeError as exc:
        assert "sparsity" in str(exc)
        return
    assert all(0.0 <= v < 1.0 for v in values)
