"""Refresh a committed reproduction from its results store, in one go:

    python docs/reproduction/refresh.py --results results --sweep fmnist-1ep-fast

1. ``python -m runner.export``: the store's finished runs -> docs/reproduction/<sweep>/
   (skipped without ``--results``: the committed run folders are used as they are);
2. ``python -m paper_figures``: table2.*, claims.md and the figures, from the committed copy;
3. the README's ``<!-- results-table <sweep> -->`` block <- the new table2.md, and its
   ``<!-- claims-in-short <sweep> -->`` block <- claims.md's verdicts and numbers.
The README's hand-written notes on the claims are then for a person to read again
(``tests/test_reproduction.py`` checks that both blocks are current).
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


def table_block(table2_md: str) -> str:
    """The part of a table2.md that the README shows: the table and its footnotes."""
    lines = table2_md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    end = next(i for i, line in enumerate(lines) if line.startswith("Speedup = "))
    return "\n".join(lines[start:end]).strip() + "\n"


def splice_table(readme: str, sweep: str, table2_md: str) -> tuple[str, int]:
    """``readme`` with its ``<!-- results-table <sweep> -->`` block replaced by the table of
    ``table2_md``, and how many blocks there were."""
    pattern = re.compile(rf"(<!-- results-table {re.escape(sweep)} -->\n).*?"
                         r"(<!-- /results-table -->)", re.S)
    return pattern.subn(lambda m: m[1] + table_block(table2_md) + m[2], readme)


def claims_block(claims_md: str) -> str:
    """The part of a claims.md that the README shows: its verdict line and claims in short."""
    start, end = "<!-- claims-in-short -->\n", "<!-- /claims-in-short -->"
    return claims_md[claims_md.index(start) + len(start):claims_md.index(end)]


def splice_claims(readme: str, sweep: str, claims_md: str) -> tuple[str, int]:
    """``readme`` with its ``<!-- claims-in-short <sweep> -->`` block replaced by the claims
    in short of ``claims_md``, and how many blocks there were."""
    pattern = re.compile(rf"(<!-- claims-in-short {re.escape(sweep)} -->\n).*?"
                         r"(<!-- /claims-in-short -->)", re.S)
    return pattern.subn(lambda m: m[1] + claims_block(claims_md) + m[2], readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", help="the results store of the sweep (leave it out to "
                        "rebuild the outputs from the committed run folders alone)")
    parser.add_argument("--sweep", required=True, help="sweep name (also the folder's name)")
    args = parser.parse_args(argv)
    out = DOCS / args.sweep
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    export = [["-m", "runner.export", "--results", str(Path(args.results).resolve()),
                "--sweep", args.sweep, "--out", str(out)]] if args.results else []
    for command in (*export,
                    ["-m", "paper_figures", "--results", str(DOCS), "--sweep", args.sweep,
                     "--out", str(out)]):
        subprocess.run([sys.executable, *command], cwd=REPO, env=env, check=True)
    readme = REPO / "README.md"
    text, n_table = splice_table(readme.read_text(), args.sweep,
                                 (REPO / out / "table2.md").read_text())
    text, n_claims = splice_claims(text, args.sweep, (REPO / out / "claims.md").read_text())
    readme.write_text(text)
    print(f"README: {n_table} results-table and {n_claims} claims-in-short block(s) of "
          f"{args.sweep} updated; read its notes on the claims against {out / 'claims.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
