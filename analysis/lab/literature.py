"""The typical ranges of the literature that the lab's measurements are set beside: one table, one place.

From the background article's table "Pruning Strategy vs. Accuracy Drop Profile" (prior to fine-tuning), one
column per family of strategies: ``unstructured`` pruning, ``structured`` pruning and pruning at
initialisation (``init``). Where the article gives numbers, ``Typical`` keeps them as a range in the unit of the
lab's measured row (a drop as a fraction, a recovery share, epochs), so a measurement can be placed inside,
below or above it; the article's words are kept as they are. The article has no column for N:M (semi-structured)
sparsity: such strategies show none.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = "the background article's table 'Pruning Strategy vs. Accuracy Drop Profile' (typical ranges)"
FAMILIES = {"unstructured": "Unstructured pruning", "structured": "Structured pruning",
            "init": "Pruning at initialization"}


@dataclass(frozen=True)
class Typical:
    """One cell of the article's table: its words, and the range they state (``None``: open or not numeric)."""

    text: str
    low: float | None = None
    high: float | None = None

    @property
    def numeric(self) -> bool:
        return self.low is not None or self.high is not None

    def place(self, value: float | None) -> str | None:
        """``within``, ``below`` or ``above`` the range; ``None`` when either side is not a number."""
        if value is None or not self.numeric:
            return None
        if self.low is not None and value < self.low:
            return "below"
        if self.high is not None and value > self.high:
            return "above"
        return "within"


# row (the lab's measured row it sits beside) -> family -> the article's cell
TYPICAL: dict[str, dict[str, Typical]] = {
    "initial_drop": {"unstructured": Typical("0.5% - 2.0%", 0.005, 0.02),
                     "structured": Typical("2.0% - 10.0%", 0.02, 0.10),
                     "init": Typical("(no number; 'immediate, catastrophic')")},
    "drop_profile": {"unstructured": Typical("Gradual, distributed"), "structured": Typical("Sharp, layer-specific"),
                     "init": Typical("Immediate, catastrophic")},
    "recovery": {"unstructured": Typical("High (>95%)", 0.95, None),
                 "structured": Typical("Moderate (70%-90%)", 0.70, 0.90),
                 "init": Typical("Low (<50%)", None, 0.50)},
    "recovery_epochs": {"unstructured": Typical("5 - 20", 5.0, 20.0), "structured": Typical("20 - 100+", 20.0, None),
                        "init": Typical("Often fails to recover")},
    "pattern": {"unstructured": Typical("Irregular, hardware-unfriendly"),
                "structured": Typical("Regular, hardware-friendly"), "init": Typical("Data-dependent, variable")},
    "spread": {"unstructured": Typical("Low variance"), "structured": Typical("High variance (early layers sensitive)"),
               "init": Typical("Extreme variance")},
}


def typical(row: str, family: str | None) -> Typical | None:
    """The article's cell for a measured row and a family of strategies, or ``None`` (no such row or column)."""
    return TYPICAL.get(row, {}).get(family) if family else None
