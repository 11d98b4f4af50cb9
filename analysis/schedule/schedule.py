"""Per-layer sparsity schedules: what to prune where, saved as JSON or YAML and checked against a model.

A ``Schedule`` maps layer names to sparsities and names the criterion and granularity that turn them into
masks. Layers it does not name stay dense.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from analysis.core import criteria, masks
from analysis.core.granularity import check_sparsity, parse_granularity, supports
from analysis.core.layers import Layer
from analysis.schedule.coupling import Coupling
from analysis.schedule.totals import Totals
from analysis.schedule.totals import totals as count_totals


class ScheduleError(ValueError):
    """A schedule that does not fit its model, or a schedule file that cannot be read."""


@dataclass
class Schedule:
    """Layer name -> fraction of its weights (or channels) to remove, with the criterion and granularity."""

    sparsities: dict[str, float]
    criterion: str = "magnitude"
    granularity: str = "unstructured"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        criteria.check_criterion(self.criterion)
        self.granularity = str(parse_granularity(self.granularity))
        clean = {}
        for name, value in self.sparsities.items():
            if not isinstance(name, str) or not name:
                raise ScheduleError(f"layer names must be non-empty strings, got {name!r}")
            if isinstance(value, bool):
                raise ScheduleError(f"sparsity of layer {name} must be a number, got {value!r}")
            try:
                clean[name] = check_sparsity(value, what=f"sparsity of layer {name}")
            except ValueError as exc:
                raise ScheduleError(str(exc)) from None
        self.sparsities = clean

    # ------------------------------------------------------------------------------------------------ files

    def to_dict(self) -> dict:
        return {"criterion": self.criterion, "granularity": self.granularity,
                "sparsities": dict(self.sparsities), "meta": self.meta}

    @classmethod
    def from_dict(cls, d: object, source: str = "schedule") -> "Schedule":
        if not isinstance(d, dict):
            raise ScheduleError(f"{source} must be a mapping with 'sparsities', got {type(d).__name__}")
        if "sparsities" not in d or not isinstance(d["sparsities"], dict):
            raise ScheduleError(f"{source} needs a 'sparsities' mapping of layer name to sparsity")
        unknown = set(d) - {"criterion", "granularity", "sparsities", "meta"}
        if unknown:
            raise ScheduleError(f"{source} has unknown keys: {', '.join(sorted(map(str, unknown)))}")
        try:
            named = {str(k) if isinstance(k, int) and not isinstance(k, bool) else k: v  # YAML reads `0:` as 0
                     for k, v in d["sparsities"].items()}
            return cls(named, d.get("criterion", "magnitude"), d.get("granularity", "unstructured"),
                       dict(d.get("meta") or {}))
        except ScheduleError:
            raise
        except (ValueError, TypeError) as exc:
            raise ScheduleError(f"{source}: {exc}") from None

    def save(self, path: str | Path) -> Path:
        """Write JSON, or YAML when the name ends in ``.yaml``/``.yml``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        else:
            path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Schedule":
        path = Path(path)
        if not path.is_file():
            raise ScheduleError(f"schedule file {path} does not exist")
        text = path.read_text(errors="replace")
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:  # noqa: BLE001 - any parse error is the file's fault
            kind = 'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'
            raise ScheduleError(f"schedule file {path} is not valid {kind}: "
                                f"{' '.join(str(exc).split())[:200]}") from None
        return cls.from_dict(data, source=f"schedule file {path}")

    # ----------------------------------------------------------------------------------------------- models

    def validate(self, layers: list[Layer]) -> None:
        """Every named layer exists and can take the granularity at its sparsity; else a ``ScheduleError``."""
        by_name = {l.name: l for l in layers}
        gran = parse_granularity(self.granularity)
        for name, s in self.sparsities.items():
            if name not in by_name:
                raise ScheduleError(f"schedule names layer {name!r}, which the model does not have")
            if s == 0.0:
                continue
            reason = supports(gran, by_name[name].shape)
            if reason:
                raise ScheduleError(f"layer {name} cannot take granularity {gran}: {reason}")
            try:
                gran.check_layer_sparsity(s, name)
            except ValueError as exc:
                raise ScheduleError(str(exc)) from None

    def masks(self, model: nn.Module, layers: list[Layer],
              stats: criteria.CalibrationStats | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
        """Keep-masks by parameter name for every layer the schedule prunes."""
        self.validate(layers)
        out = {}
        for layer in layers:
            s = self.sparsities.get(layer.name, 0.0)
            if s > 0.0:
                maker = masks.maker_for(layer, model, self.criterion, self.granularity, stats, seed)
                out.update(layer.masks(maker(s)))
        return out

    def totals(self, layers: list[Layer], coupling: Coupling | None = None) -> Totals:
        """Global sparsity, parameters and FLOPs kept (pass the model's ``Coupling`` for ``channel`` granularity)."""
        return count_totals(self, layers, coupling)
