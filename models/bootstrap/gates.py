"""The held-out gates a trained model must pass to be published, and the refusal when it does not.

Each model's gates are a list of ``GateCheck`` built from its held-out report and the plan's ``Gates``
thresholds (``classifier_gates``, ``captioner_gates``); the runner records every check in the
manifest and publishes only when all pass. A new gate is one more ``gate(...)`` in its model's list
(and its threshold in ``plan.Gates``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pixelrpc.models.bootstrap.plan import CAPTIONER_NAME, CLASSIFIER_NAME, Gates
from pixelrpc.models.errors import FailedPrecondition

if TYPE_CHECKING:
    from pixelrpc.models.bootstrap.captioner import CaptionerReport
    from pixelrpc.models.bootstrap.classifier import ClassifierReport


class GateFailed(FailedPrecondition):
    """A trained model missed its held-out gate, so it was not published."""

    def __init__(self, check: GateCheck):
        super().__init__(
            f"{check.model} not published: {check.line()}. Training is deterministic for a "
            "seed (and CPU type): try 'pixelrpc models bootstrap --force --seed N' with another N, "
            "and report these numbers"
        )
        self.check = check


@dataclass(frozen=True)
class GateCheck:
    """One held-out number beside its baseline and the threshold it had to reach."""

    model: str
    metric: str
    value: float
    baseline: float
    baseline_name: str
    threshold: float

    @property
    def passed(self) -> bool:
        return bool(self.value >= self.threshold)

    def line(self) -> str:
        ratio = self.value / self.baseline if self.baseline > 0 else math.inf
        return (
            f"{self.metric} {self.value:.3f} vs {self.baseline_name} {self.baseline:.3f} "
            f"({ratio:.1f}x; gate >= {self.threshold:.3f}) {'PASS' if self.passed else 'FAIL'}"
        )

    def to_json(self) -> dict:
        return {
            "metric": self.metric,
            "value": self.value,
            "baseline": self.baseline,
            "baseline_name": self.baseline_name,
            "threshold": self.threshold,
            "passed": self.passed,
        }


def gate(
    model: str,
    metric: str,
    value: float,
    baseline: float,
    baseline_name: str,
    *,
    minimum: float,
    over_baseline: float,
) -> GateCheck:
    """The check ``value >= max(minimum, over_baseline * baseline)``."""
    return GateCheck(
        model,
        metric,
        float(value),
        float(baseline),
        baseline_name,
        float(max(minimum, over_baseline * baseline)),
    )


def classifier_gates(report: ClassifierReport, gates: Gates) -> list[GateCheck]:
    """Held-out accuracy against the majority class, and saliency on the objects against uniform."""
    return [
        gate(
            CLASSIFIER_NAME,
            "held-out accuracy",
            report.accuracy,
            report.majority_accuracy,
            f"majority class ({report.majority_class})",
            minimum=gates.min_accuracy,
            over_baseline=gates.accuracy_over_majority,
        ),
        gate(
            CLASSIFIER_NAME,
            "saliency inside/outside objects",
            report.saliency_ratio,
            1.0,
            "uniform saliency",
            minimum=gates.min_saliency_ratio,
            over_baseline=0.0,
        ),
    ]


def captioner_gates(report: CaptionerReport, gates: Gates) -> list[GateCheck]:
    """Held-out BLEU-4 against the best constant caption and, when the report has one, the saliency of
    explained words on the objects they name against uniform (``explain_gate``)."""
    checks = [
        gate(
            CAPTIONER_NAME,
            "held-out BLEU-4",
            report.bleu["bleu4"],
            report.constant_bleu["bleu4"],
            f"best constant caption ({report.constant_caption!r})",
            minimum=gates.min_bleu4,
            over_baseline=gates.bleu4_over_constant,
        )
    ]
    if report.explain_saliency:
        checks.append(
            gate(
                CAPTIONER_NAME,
                "explained words' saliency on the named object/outside objects",
                report.explain_saliency["ratio"],
                1.0,
                "uniform saliency",
                minimum=gates.min_explain_ratio,
                over_baseline=0.0,
            )
        )
    return checks
