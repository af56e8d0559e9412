"""Names that the entry points, the run layer and the scripts around them share, written once:
exit statuses, default names, and the results store's file names (standard library only).

``sweep.py``, ``train.py``, ``runner``, ``paper_figures``, ``bench`` and ``docs/reproduction``
import them from here.
"""
from __future__ import annotations

from pathlib import Path

# -- exit statuses of train.py and sweep.py ------------------------------------------------
EXIT_OK = 0  # finished (a diverged run too: recorded, not an error of the program)
EXIT_FAILED = 1  # a run failed (one line says why; the traceback is in its summary.json)
EXIT_USAGE = 2  # bad arguments, or stored runs with other settings
EXIT_LOCKED = 75  # EX_TEMPFAIL: another process trains the run; try again later
EXIT_SIGNAL = 128  # + N: interrupted by signal N (resumable)

# -- default names -------------------------------------------------------------------------
REPOSITORY = Path(__file__).resolve().parents[1]  # where train.py and sweep.py live
TRAIN_SCRIPT, SWEEP_SCRIPT = "train.py", "sweep.py"
DEFAULT_RESULTS = "results"  # the results store's root
DEFAULT_TABLE = "table2"  # sweep.py's table, and the name of its sweep
SINGLE_SWEEP = "single"  # train.py's sweep name
QUICK_SWEEP = "quick"  # sweep.py --quick's sweep name
DEFAULT_DATASET = "emnist-mnist"  # the papers'
DEFAULT_PROJECT = "hopfield-deq"  # the W&B project
SWEEP_RECORD = "wandb_sweep.json"  # in <results>/<sweep>/: the W&B sweep of this grid
WORKER_ENV = "HOPFIELD_SWEEP_WORKER"  # set in the extra processes of sweep.py --workers

# -- the results store: <results>/<sweep>/<run>/<file> ---------------------------------------
CONFIG, SUMMARY, METRICS = "config.json", "summary.json", "metrics.csv"
TRAJECTORIES, ENERGY = "trajectories.npz", "energy.npz"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
LOCK = ".lock"
