"""The documentation gives policy and evaluation paths as the workflow writes them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# policy/<arm>/..., eval/<arm>/... (not lapa/policy/, the package): the workflow writes one per seed
_PATH = re.compile(r"(?<![\w.-])(?<!lapa/)(policy|eval)/([^/\s`\"')]+)(/[^\s`\"')]*)?")


def test_policy_and_evaluation_paths_name_the_seed():
    seen = 0
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            for m in _PATH.finditer(line):
                seen += 1
                assert (m.group(3) or "").startswith("/seed"), f"{doc.name}:{n}: {m.group(0)} (no seed<N>/)"
    assert seen >= 5
