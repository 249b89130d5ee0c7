"""Rebuild the README's algorithm reference from algorithms/help/*.md.

`python scripts/build_reference.py` rewrites README.md between the reference markers;
`--check` exits 1 when the README is out of date (a test runs that).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START, END = "<!-- reference:start -->", "<!-- reference:end -->"
# The order a user meets the algorithms in; any other help file follows alphabetically.
ORDER = [
    "trainmodel",
    "segmentraster",
    "pseudolabelfrompoints",
    "evaluatesegmentation",
    "segmentwithsam",
    "samautomaticmasks",
    "topographicsinks",
    "polygonizeclasses",
]


def display_name(name: str) -> str:
    source = (ROOT / "algorithms" / f"{name}.py").read_text(encoding="utf-8")
    match = re.search(r'DISPLAY\s*=\s*"([^"]+)"', source)
    return match.group(1) if match else name


def reference() -> str:
    names = [p.stem for p in sorted((ROOT / "algorithms" / "help").glob("*.md"))]
    names.sort(key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    parts = [START, ""]
    for name in names:
        text = (ROOT / "algorithms" / "help" / f"{name}.md").read_text(encoding="utf-8").strip()
        text = re.sub(r"^## ", "#### ", text, flags=re.M)
        parts += [f"### {display_name(name)} (`mapseg:{name}`)", "", text, ""]
    parts.append(END)
    return "\n".join(parts)


def main() -> int:
    readme = README.read_text(encoding="utf-8")
    if START not in readme or END not in readme:
        print("README.md lacks the reference markers", file=sys.stderr)
        return 1
    head, rest = readme.split(START, 1)
    tail = rest.split(END, 1)[1]
    updated = head + reference() + tail
    if "--check" in sys.argv:
        if updated != readme:
            print(
                "README.md's algorithm reference is out of date: run "
                "`.venv/bin/python scripts/build_reference.py`",
                file=sys.stderr,
            )
            return 1
        return 0
    README.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
