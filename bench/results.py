"""One results table for every benchmark (``make bench`` prints it at the end).

Each benchmark measures PixelRPC and the reference it runs itself, in the same process run, and
records one row per workload with ``record``. Rows go to the JSON-lines file named by
``PIXELRPC_BENCH_RESULTS`` (``make bench`` sets it); without it they are only printed.
``python bench/results.py FILE`` prints the table of a run and exits 1 if a row missed its target.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass

ENV = "PIXELRPC_BENCH_RESULTS"
REPORT = "report"  # a target that is no target: the row is there to be read (the script's README says why)


@dataclass(frozen=True)
class Row:
    workload: str  # what was measured, with its size and threads
    reference: str  # what it is compared with: a loop the benchmark runs itself
    reference_value: float
    pixelrpc_value: float
    unit: str  # e.g. "captions/s", "ms", "s/iter"
    ratio: float  # PixelRPC / reference, in the direction the target states
    target: str  # e.g. ">= 0.9", "<= 1.3", or "report"
    passed: bool


def target_met(ratio: float, target: str) -> bool:
    """``ratio`` against a target written ``">= x"`` or ``"<= x"``; ``"report"`` is always met."""
    if target == REPORT:
        return True
    op, value = target.split()
    return ratio >= float(value) if op == ">=" else ratio <= float(value)


def record(workload: str, reference: str, reference_value: float, pixelrpc_value: float, unit: str,
           ratio: float, target: str) -> Row:
    """Print one row and append it to the run's results file."""
    row = Row(workload, reference, float(reference_value), float(pixelrpc_value), unit, float(ratio), target,
              target_met(ratio, target))
    print(f"  [{result(row)}] {workload}: {pixelrpc_value:.4g} vs {reference_value:.4g} "
          f"{unit} ({reference}), ratio {ratio:.3g}, target {target}", flush=True)
    path = os.environ.get(ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(asdict(row)) + "\n")
    return row


def result(row: Row) -> str:
    return REPORT if row.target == REPORT else "pass" if row.passed else "FAIL"


def table(rows: list[Row]) -> str:
    head = ("workload", "reference", "reference value", "PixelRPC", "ratio", "target", "result")
    body = [(r.workload, r.reference, f"{r.reference_value:.4g} {r.unit}", f"{r.pixelrpc_value:.4g} {r.unit}",
             f"{r.ratio:.3g}", r.target, result(r)) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body, strict=True)]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) for line in (head, *body)]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    path = argv[0] if argv else os.environ.get(ENV, "")
    if not path or not os.path.exists(path):
        print("no benchmark results recorded")
        return 1
    with open(path) as f:
        rows = [Row(**json.loads(line)) for line in f if line.strip()]
    print(table(rows))
    failed = sum(not r.passed for r in rows)
    reported = sum(r.target == REPORT for r in rows)
    print(f"{len(rows) - failed - reported} passed, {failed} failed" + (f", {reported} reported" if reported else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
