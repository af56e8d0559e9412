"""Where the figure scripts read sweep results: the local results store or a W&B sweep.

Both sources give the same records: one dict per run with ``row``, ``depth``, ``seed``,
``status``, the ``test/...`` metrics, and (local store) ``dir``, the run directory.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional

from deq_modules.results import iter_runs, read_json

CACHE = Path(os.environ.get("HOPFIELD_FIGURE_CACHE", ".cache/paper_figures"))


def local_records(results: str, sweep: Optional[str]) -> List[Dict]:
    """Every run under ``results[/sweep]``; a run without a summary counts as ``missing``."""
    records = []
    for directory in iter_runs(results, sweep):
        config = read_json(directory / "config.json") or {}
        summary = read_json(directory / "summary.json") or {"status": "missing"}
        if "row" not in config or "depth" not in config:
            continue
        records.append({**summary, "row": config["row"], "depth": int(config["depth"]),
                        "seed": int(config["seed"]), "dir": directory})
    return records


def wandb_records(sweep_path: str, download: bool = False) -> List[Dict]:
    """The runs of the W&B sweep ``ENTITY/PROJECT/SWEEP_ID`` (needs network and an API key).

    With ``download`` each finished run's ``run-results`` artifact (trajectories, config) is
    fetched into the cache, and ``dir`` points there.
    """
    import wandb

    records = []
    for run in wandb.Api().sweep(sweep_path).runs:
        config, summary = dict(run.config), dict(run.summary)
        row, depth = str(config["experiment"]).rsplit("-L", 1)
        record = {**summary, "row": row, "depth": int(depth), "seed": int(config["seed"]),
                  "status": "finished" if run.state == "finished" else run.state}
        if download and record["status"] == "finished":
            for artifact in run.logged_artifacts():
                if artifact.type == "run-results":
                    record["dir"] = Path(artifact.download(root=str(CACHE / run.name)))
        records.append(record)
    return records


def read_records(results: str, sweep: Optional[str], wandb_sweep: Optional[str] = None,
                 download: bool = False) -> List[Dict]:
    if wandb_sweep:
        return wandb_records(wandb_sweep, download=download)
    return local_records(results, sweep)
