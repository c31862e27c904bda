"""experiments/gpu_check.sh fits its call: the steps' limits, each with its kill grace and the refresh of the
summary after it, sum to at most its stated budget; its output folder holds a summary and a tarball only."""

from __future__ import annotations

import re
from pathlib import Path

SCRIPT = (Path(__file__).resolve().parents[1] / "experiments" / "gpu_check.sh").read_text()


def setting(name: str) -> int:
    return int(re.search(rf"^{name}=(\d+)$", SCRIPT, flags=re.M).group(1))


def test_the_steps_fit_the_budget_with_their_grace_and_refresh():
    limits = [int(m) for m in re.findall(r'^step \S+ (\d+) ', SCRIPT, flags=re.M)]
    assert len(limits) == 7
    total = sum(limits) + len(limits) * (setting("GRACE") + setting("REFRESH"))
    assert total <= setting("BUDGET") == 480, total


def test_only_the_summary_and_the_tarball_are_written_to_the_output_folder():
    written = set(re.findall(r'"\$OUT/([\w.]+)"', SCRIPT))
    assert written <= {"summary.md", "summary.md.tmp", "evidence.tar.gz", "evidence.tar.gz.tmp"}, written
