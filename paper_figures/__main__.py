"""``python -m paper_figures [--results results] [--sweep table2] [--out figures]``: the table
and both figures."""
import sys

from . import table, trajectories


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return table.main(argv) or trajectories.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
