"""How the figures look on a paper's page: text width, font sizes, PDF and PNG files.

A figure is drawn at the size it is printed (a two-column paper's full text width), so its
7-9 pt labels stay 7-9 pt; it is written as PDF (vector, for the paper) and PNG (a look).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import matplotlib
from matplotlib.figure import Figure, SubFigure

from runner.store import atomic_write_with

TEXT_WIDTH = 6.75  # inches: a two-column page's text width (a figure* spanning both columns)
DPI = 300  # of the PNG, and of the rasterised heatmaps inside the PDF
SMALL, NORMAL, LARGE = 7, 8, 9  # points: ticks, legends, notes; labels, titles; figure titles
FORMATS = ("pdf", "png")
RC = {
    "font.size": NORMAL, "axes.titlesize": NORMAL, "axes.labelsize": NORMAL,
    "xtick.labelsize": SMALL, "ytick.labelsize": SMALL, "legend.fontsize": SMALL,
    "figure.titlesize": LARGE, "figure.labelsize": NORMAL,
    "axes.linewidth": 0.6, "xtick.major.width": 0.6, "ytick.major.width": 0.6,
    "xtick.minor.width": 0.4, "ytick.minor.width": 0.4, "xtick.major.size": 2.5,
    "ytick.major.size": 2.5, "xtick.minor.size": 1.5, "ytick.minor.size": 1.5,
    "axes.titlepad": 3.0, "legend.frameon": False,
    "pdf.fonttype": 42,  # TrueType in the PDF: text stays text (searchable, editable)
}


@contextmanager
def paper_style() -> Iterator[None]:
    """Draw (and save) inside this context: the sizes above instead of matplotlib's 10 pt."""
    with matplotlib.rc_context(RC):
        yield


def fix_tick_sizes(fig: Figure | SubFigure) -> None:
    """Tick labels are made lazily when the figure is drawn, possibly outside
    :func:`paper_style`; pin their size on every axes now."""
    for ax in fig.axes:
        ax.tick_params(which="both", labelsize=SMALL)


def save(fig: Figure, out: Path, stem: str) -> list[Path]:
    """Write ``out/stem.pdf`` and ``out/stem.png`` atomically (never a half-written file)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    with paper_style():
        for fmt in FORMATS:
            path = out / f"{stem}.{fmt}"
            # No creation date in the PDF: the same results give the same file.
            metadata = {"CreationDate": None} if fmt == "pdf" else None
            atomic_write_with(path, lambda f, fmt=fmt, metadata=metadata: fig.savefig(
                f, format=fmt, dpi=DPI, metadata=metadata))
            paths.append(path)
    return paths


def saved_line(path: Path, counts: dict[str, int], what: str = "seeds pooled") -> str:
    """What a figure script prints after writing ``path`` (and its PNG): the runs it used per
    row key."""
    return f"wrote {path} and .png ({what}: {', '.join(f'{k} {n}' for k, n in counts.items())})"
