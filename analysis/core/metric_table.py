"""What each metric means: one place for its name, direction, chance level, scale and label needs."""

from __future__ import annotations

METRICS = ("accuracy", "loss", "agreement", "kl", "logit_cosine", "logit_rel_l2")


HIGHER_IS_BETTER = {"accuracy": True, "agreement": True, "loss": False, "kl": False, "logit_cosine": True,
                    "logit_rel_l2": False}
