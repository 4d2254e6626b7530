"""`train` with a throughput probe that under-rates the machine four times, so that a `--minutes` plan ends
long before its deadline: patched in by a test, or run as the script torchrun starts on each rank
(`python tests/trainer/under_rated.py train ...`, the repository on PYTHONPATH)."""

from __future__ import annotations

import sys
from typing import Any

import trainer.budget as budget
from trainer.cli import main

MEASURE = budget.probe_throughput


def under_rated(*args: Any, **kwargs: Any) -> budget.Probe:
    """The probe's measurement with every rate divided by four (its set-up and parts as measured)."""
    probe = MEASURE(*args, **kwargs)
    return budget.Probe({r: v / 4 for r, v in probe.rates.items()}, probe.setup, probe.parts)


if __name__ == "__main__":
    budget.probe_throughput = under_rated
    sys.exit(main(sys.argv[1:]))
