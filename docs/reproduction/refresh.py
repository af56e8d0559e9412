"""Refresh a committed reproduction from its results store, in one go:

    python docs/reproduction/refresh.py --results results --sweep fmnist-1ep-fast

1. ``python -m runner.export``: the store's finished runs -> docs/reproduction/<sweep>/;
2. ``python -m paper_figures``: table2.*, claims.md and the figures, from the committed copy;
3. the README's ``<!-- results-table <sweep> -->`` block <- the new table2.md.
The README's prose (and its quoted verdict line) is then for a person to read again: the
test ``tests/test_reproduction.py`` fails until it quotes the current verdicts.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = Path("docs") / "reproduction"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", required=True, help="the results store of the sweep")
    parser.add_argument("--sweep", required=True, help="sweep name (also the folder's name)")
    args = parser.parse_args(argv)
    out = DOCS / args.sweep
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for command in (["-m", "runner.export", "--results", args.results, "--sweep", args.sweep,
                     "--out", str(out)],
                    ["-m", "paper_figures", "--results", str(DOCS), "--sweep", args.sweep,
                     "--out", str(out)]):
        subprocess.run([sys.executable, *command], cwd=REPO, env=env, check=True)
    lines = (REPO / out / "table2.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    end = next(i for i, line in enumerate(lines) if line.startswith("Speedup = "))
    table = "\n".join(lines[start:end]).strip() + "\n"
    readme = REPO / "README.md"
    pattern = re.compile(rf"(<!-- results-table {re.escape(args.sweep)} -->\n).*?"
                         r"(<!-- /results-table -->)", re.S)
    text, n = pattern.subn(lambda m: m[1] + table + m[2], readme.read_text())
    if n:
        readme.write_text(text)
    print(f"README: {'table updated' if n else 'no results-table block for this sweep'}; "
          f"read its claims against {out / 'claims.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
