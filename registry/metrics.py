"""The benchmark metrics a model may be registered under: valid range and which way is better."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    minimum: float = -math.inf
    maximum: float = math.inf

    @property
    def direction(self) -> str:
        return "higher" if self.higher_is_better else "lower"

    def range_error(self, value: float) -> str | None:
        """Why `value` cannot be a value of this metric, or None."""
        if not math.isfinite(value):
            return "must be a finite number"
        if not self.minimum <= value <= self.maximum:
            return f"{self.name} lies between {self.minimum} and {self.maximum}"
        return None

    def beats(self, current: float | None, baseline: float) -> bool:
        """Whether `current` is better than `baseline` (no current value beats nothing)."""
        if current is None:
            return False
        return current > baseline if self.higher_is_better else current < baseline

    def improvement_percentage(self, current: float, baseline: float) -> float | None:
        """How much better than the baseline, in percent of it; None for a zero baseline."""
        if baseline == 0:
            return None
        gain = current - baseline if self.higher_is_better else baseline - current
        return round(gain / abs(baseline) * 100, 6)


def _share(name: str) -> Metric:
    return Metric(name, higher_is_better=True, minimum=0.0, maximum=1.0)


def _error(name: str) -> Metric:
    return Metric(name, higher_is_better=False, minimum=0.0)


METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        _share("accuracy"),
        _share("auroc"),
        _share("auc"),
        _share("f1"),
        _share("precision"),
        _share("recall"),
        _error("mse"),
        _error("rmse"),
        _error("mae"),
        Metric("r2", higher_is_better=True, maximum=1.0),
        _share("reply_rate"),
        _share("conversion_rate"),
        Metric("engagement_score", higher_is_better=True, minimum=0.0),
    )
}
