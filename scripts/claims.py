"""Write docs/claims.md from the claim blocks of studies/claim-*.yaml and the committed results
docs/studies/<study>.json (copied from each study's report folder); --check only compares."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from stagewise.study.claims import claims_markdown
from stagewise.study.config import ClaimConfig

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/claims.md is not what it would write")
    args = parser.parse_args()
    studies = []
    for path in sorted((ROOT / "studies").glob("claim-*.yaml")):
        claim = ClaimConfig.model_validate(yaml.safe_load(path.read_text())["claim"])
        results_path = ROOT / "docs/studies" / f"{path.stem}.json"
        results = json.loads(results_path.read_text()) if results_path.is_file() else None
        studies.append((path.stem, results, claim))
    text = claims_markdown(studies)
    target = ROOT / "docs/claims.md"
    if args.check:
        same = target.is_file() and target.read_text() == text
        print("docs/claims.md is up to date" if same else "docs/claims.md differs: run python scripts/claims.py")
        return 0 if same else 1
    target.write_text(text)
    print(f"wrote {target.relative_to(ROOT)} ({len(studies)} claims, {sum(r is not None for _, r, _ in studies)} run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
