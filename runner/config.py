"""What defines one run, and the one mapping between it and a command line.

``add_run_args(parser)`` declares the options every entry point shares (``train.py``,
``sweep.py``), :meth:`RunConfig.from_args` reads them back, and :meth:`RunConfig.to_argv` writes
a ``train.py`` command line for the same run (DDP subprocesses, W&B agents). A new option is
written once, here.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from deq_modules.data.batches import batches_per_device
from deq_modules.data.names import DATASETS, SPLIT_IMAGES
from deq_modules.experiments import FAST_MODE, TRAINING_RECIPE, Experiment, get_experiment

from .store import check_name, jsonable, run_dir

WANDB_MODES = ("online", "offline", "disabled")
# The keys of config.json that decide what a run computes: a stored run is reused only if they
# match. Every option, audited (issue 24):
#
#   option                        changes the result?   why
#   row, depth, experiment        yes (defining)        the model, solver, iterations, lr, batch
#   seed, dataset, synthetic_kwargs, epochs, lr         yes (defining)   the data and training
#   limit_train/test_batches      yes (defining)        what is trained and tested on
#   fast, fast_mode               yes (defining)        tolerance, backward, bf16/adjoint
#                                                       precision, validation: another gradient
#   recipe                        yes (defining)        the training procedure's version
#                                                       (deq_modules.experiments.TRAINING_RECIPE)
#   devices                       yes (defining)        DDP over N ranks: each step averages N
#                                                       batches (N x the batch, 1/N the steps)
#                                                       and the test runs N x the batch limit
#                                                       on N shards (padded); compared as the
#                                                       number of ranks (2 == "0,1")
#   accelerator, compile_f,       rounding only         other kernels, the same arithmetic;
#   fused_anderson, threads                             training can amplify rounding (README,
#                                                       "--workers"), so these are recorded
#                                                       (config.json, summary's "device") and a
#                                                       run may resume on another machine
#   data_dir, download            no                    where the same (checked) files are
#   results, sweep, wandb_*,      no                    where results and logs go, labels
#   extra_tags
DEFINING_KEYS = ("row", "depth", "seed", "dataset", "epochs", "limit_train_batches",
                 "limit_test_batches", "synthetic_kwargs", "lr", "fast", "fast_mode",
                 "experiment", "devices", "recipe")
Batches = int | float | None
# Keys of FAST_MODE that fast runs stored before them lack, with the value that computes what
# those runs computed (a run interrupted then resumes; "validation" is not here: before it
# existed, fast runs validated with the paper's settings, which the default "fast" is not).
FAST_MODE_BEFORE_KEYS = {"adjoint_precision": None}
MAX_SEED = 2**32 - 1  # numpy's seeds (and so Lightning's seed_everything): 0 .. 2**32 - 1


def device_count(devices: Any) -> Any:
    """The number of processes ``devices`` trains with, where the value says it (``2``,
    ``"2"``, ``"0,1"``: 2); a value that leaves it to the machine (``"auto"``, ``"-1"``) as
    it is. How :meth:`RunConfig.differences` compares ``devices``."""
    if isinstance(devices, int) and not isinstance(devices, bool):
        return devices
    text = str(devices).strip()
    if text.isdigit():
        return int(text)
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if "," in text and ids and all(part.isdigit() for part in ids):
        return len(ids)  # Lightning's list of device indices
    return text


def check_batches(value: Any, flag: str) -> Batches:
    """``None``, a count of batches (int >= 1) or a fraction in (0, 1]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{flag} must be a number of batches or a fraction, got {value!r}")
    if isinstance(value, int) and value >= 1:
        return value
    if isinstance(value, float) and math.isfinite(value) and 0 < value <= 1:
        return value
    raise ValueError(f"{flag} must be a whole number >= 1 (batches) or a fraction in (0, 1], "
                     f"got {value!r}")


def batch_limit_problem(value: Batches, flag: str, batches: int, split: str) -> str | None:
    """Why the fraction ``value`` of ``batches`` per epoch leaves no batch (Lightning keeps
    ``int(batches * value)`` of them), or ``None``; a whole number keeps at least one."""
    if batches == 0:
        return (f"the {split} split makes no whole batch per epoch and device (training "
                "leaves out an incomplete last batch, as the papers did): give it more images")
    if not isinstance(value, float) or int(batches * value) >= 1:
        return None
    return (f"{flag}={value} leaves no batch: the {split} split makes {batches} batches per "
            f"epoch and device, and {value} of them is less than one; give a fraction of at "
            f"least 1/{batches}, or a whole number of batches")


def check_devices(value: Any) -> int | str:
    """``value`` if Lightning can run on it: a count >= 1, ``"auto"``, or device indices
    (``"0,1"``); else a ``ValueError``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, str):
        text, indices = value.strip(), [part.strip() for part in value.split(",")]
        if text == "auto" or (text.isdigit() and int(text) >= 1) or (
                "," in text and any(indices) and all(i.isdigit() for i in indices if i)):
            return value
    raise ValueError(f"must be a count >= 1, 'auto' or device indices such as 0,1; got "
                     f"{str(value)!r}")


def world_size(devices: int | str) -> int:
    """Processes a run trains in: the count, or the number of listed devices; ``"auto"``
    counts as one (Lightning decides it when the run starts)."""
    if isinstance(devices, int) or devices.strip().isdigit():
        return int(devices)
    if devices.strip() == "auto":
        return 1
    return sum(1 for i in devices.split(",") if i.strip())


def parse_batches(text: str) -> int | float:
    """A ``--limit-*-batches`` value: ``"5"`` is a count of batches, ``"0.25"`` a fraction."""
    try:
        value: int | float = int(text) if text.strip().lstrip("+-").isdigit() else float(text)
        return check_batches(value, "the batch limit")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err) if "must be" in str(err) else
                                         f"not a number: {text!r}") from None


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def synthetic_sizes(text: str) -> dict[str, int]:
    """``--synthetic-sizes 256,128``: training and test images of the synthetic set."""
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected TRAIN,TEST (e.g. 256,128), got {text!r}")
    n_train, n_test = (positive_int(p) for p in parts)
    return dict(n_train=n_train, n_test=n_test)


def _sweep_name(text: str) -> str:
    try:
        return check_name(text, "--name")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


@dataclass
class RunConfig:
    """Everything that defines one run; the registry fills in the paper's settings."""

    row: str
    depth: int
    seed: int
    dataset: str = "emnist-mnist"
    data_dir: str | None = None
    download: bool = True
    epochs: int | None = None  # None: the row's epochs from the registry
    limit_train_batches: Batches = None
    limit_test_batches: Batches = None
    results: str = "results"
    sweep: str = "table2"
    accelerator: str = "auto"
    devices: int | str = 1
    wandb_mode: str = "disabled"
    wandb_project: str = "hopfield-deq"
    wandb_entity: str | None = None
    wandb_run_id: str | None = None  # set by a W&B agent whose run is already started
    synthetic_kwargs: dict[str, Any] | None = None
    lr: float | None = None  # None: the row's learning rate from the registry
    fast: bool = False  # train in the fast mode (deq_modules.experiments.FAST_MODE)
    compile_f: bool = False  # torch.compile the Hopfield map (speed only: not a defining key)
    fused_anderson: bool = False  # Anderson's bookkeeping as a C++ kernel (speed only, too)
    extra_tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.experiment: Experiment = get_experiment(self.row, self.depth)  # validates both
        if self.lr is not None:
            if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) \
                    or not math.isfinite(self.lr) or self.lr <= 0:
                raise ValueError(f"lr must be a positive number, got {self.lr!r}")
            self.experiment = replace(self.experiment, lr=float(self.lr))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) \
                or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be a whole number from 0 to {MAX_SEED} (numpy's "
                             f"range), got {self.seed!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid: {list(DATASETS)}")
        if self.epochs is not None and (isinstance(self.epochs, bool)
                                        or not isinstance(self.epochs, int) or self.epochs < 1):
            raise ValueError(f"epochs must be a whole number >= 1, got {self.epochs!r}")
        check_batches(self.limit_train_batches, "limit_train_batches")
        check_batches(self.limit_test_batches, "limit_test_batches")
        try:
            check_devices(self.devices)
        except ValueError as err:
            raise ValueError(f"devices {err}") from None
        self._check_batch_limits()
        if self.wandb_mode not in WANDB_MODES:
            raise ValueError(f"unknown wandb_mode {self.wandb_mode!r}; valid: {list(WANDB_MODES)}")
        run_dir(self.results, self.sweep, self.name)  # a sweep name that stays inside results

    def split_images(self) -> dict[str, int]:
        """Images of the training and test splits, known without reading a file."""
        if self.dataset != "synthetic":
            return SPLIT_IMAGES[self.dataset]
        from deq_modules.data.synthetic import synthetic_options  # imports torch: only here

        sizes = synthetic_options(self.synthetic_kwargs)
        return {"train": sizes["n_train"], "test": sizes["n_test"]}

    def _check_batch_limits(self) -> None:
        """A batch fraction that leaves no batch is refused here, before any run: Lightning
        would refuse it only once the run has started (validation and the test both take
        ``limit_test_batches`` of the test split, which validation serves)."""
        images, ranks = self.split_images(), world_size(self.devices)
        for value, flag, split, train in (
                (self.limit_train_batches, "limit_train_batches", "train", True),
                (self.limit_test_batches, "limit_test_batches", "test", False)):
            # under DDP the last rank has the fewest evaluation samples
            batches = batches_per_device(images[split], self.experiment.batch_size, train=train,
                                         rank=ranks - 1, world_size=ranks, drop_last=train)
            problem = batch_limit_problem(value, flag, batches, split)
            if problem:
                raise ValueError(problem)

    @property
    def name(self) -> str:
        return self.experiment.run_name(self.seed)

    @property
    def directory(self) -> Path:
        return run_dir(self.results, self.sweep, self.name)

    @property
    def planned_epochs(self) -> int:
        return self.epochs if self.epochs is not None else self.experiment.epochs

    def to_dict(self) -> dict[str, Any]:
        """What ``config.json`` holds (flat keys, the registry entry under ``experiment``)."""
        return {**asdict(self), "experiment": self.experiment.to_dict(), "run_name": self.name,
                "epochs": self.planned_epochs, "fast_mode": dict(FAST_MODE) if self.fast else None,
                "recipe": TRAINING_RECIPE}

    def differences(self, stored: dict[str, Any]) -> list[str]:
        """The defining settings in which a stored ``config.json`` differs from this run."""
        mine = jsonable(self.to_dict())  # the stored values went through the same conversion
        stored = dict(stored)
        if isinstance(stored.get("fast_mode"), dict):  # keys added later, at what they did then
            stored["fast_mode"] = {**FAST_MODE_BEFORE_KEYS, **stored["fast_mode"]}
        compared = {"devices": device_count}  # the same number of ranks however written

        def same(key: str) -> bool:
            as_compared = compared.get(key, lambda value: value)
            return as_compared(stored.get(key)) == as_compared(mine.get(key))

        return [f"{k}: stored {stored.get(k)!r}, now {mine.get(k)!r}"
                for k in DEFINING_KEYS if not same(k)]

    @classmethod
    def from_args(cls, args: argparse.Namespace, **run: Any) -> "RunConfig":
        """A run from the shared options (:func:`add_run_args`) plus ``row``, ``depth``,
        ``seed`` and anything else given as keywords."""
        shared = dict(dataset=args.dataset or "emnist-mnist", data_dir=args.data_dir, download=not args.no_download,
                      epochs=args.epochs, limit_train_batches=args.limit_train_batches,
                      limit_test_batches=args.limit_test_batches, results=args.results,
                      sweep=args.name, accelerator=args.accelerator, devices=args.devices,
                      wandb_project=args.project, wandb_entity=args.entity,
                      synthetic_kwargs=args.synthetic_sizes, lr=args.lr, fast=args.fast,
                      compile_f=args.compile, fused_anderson=args.fused_anderson)
        return cls(**{**shared, **run})

    def to_argv(self) -> list[str]:
        """``train.py`` arguments that rebuild this run (``wandb_run_id`` and tags aside)."""
        argv = ["--experiment", self.experiment.key, "--seed", str(self.seed),
                "--dataset", self.dataset, "--results", self.results, "--name", self.sweep,
                "--accelerator", self.accelerator, "--devices", str(self.devices),
                "--wandb", self.wandb_mode, "--project", self.wandb_project]
        for flag, value in (("--data-dir", self.data_dir), ("--epochs", self.epochs),
                            ("--lr", self.lr),
                            ("--limit-train-batches", self.limit_train_batches),
                            ("--limit-test-batches", self.limit_test_batches),
                            ("--entity", self.wandb_entity)):
            if value is not None:
                argv += [flag, str(value)]
        if self.synthetic_kwargs:
            argv += ["--synthetic-sizes",
                     f"{self.synthetic_kwargs['n_train']},{self.synthetic_kwargs['n_test']}"]
        if not self.download:
            argv.append("--no-download")
        if self.fast:
            argv.append("--fast")
        if self.compile_f:
            argv.append("--compile")
        if self.fused_anderson:
            argv.append("--fused-anderson")
        return argv


def devices_arg(text: str) -> int | str:
    """``--devices``: a count (``2``), ``auto`` or device indices (``0,1``)."""
    try:
        return check_devices(int(text) if text.strip().lstrip("+-").isdigit() else text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_run_args(parser: argparse.ArgumentParser, default_name: str | None) -> None:
    """The options every entry point shares: data, training length, results, devices, W&B."""
    g = parser.add_argument_group("run settings (paper settings where not given)")
    g.add_argument("--dataset", default=None, choices=DATASETS,
                   help="dataset (default emnist-mnist, the paper's)")
    g.add_argument("--data-dir", default=None,
                   help="dataset directory (default $HOPFIELD_DATA_DIR or ./data)")
    g.add_argument("--no-download", action="store_true",
                   help="never download; fail with a clear error if the files are missing")
    g.add_argument("--epochs", type=positive_int, default=None,
                   help="epochs to train (default: the row's, 10 for most); the learning-rate "
                        "schedule stays the paper's 10 epochs")
    g.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate (default: the row's, 0.01 or 0.005); recorded in the run")
    g.add_argument("--fast", action="store_true",
                   help="train in the fast mode: each sample's forward solve stops at the "
                        "convergence tolerance and leaves the batch, and the backward computes "
                        "the paper's unrolled-steps gradient at the fixed point (validation "
                        "stops at the tolerance too; the test keeps paper settings); "
                        "recorded in the run's config")
    g.add_argument("--compile", action="store_true",
                   help="evaluate the Hopfield map through torch.compile (needs a C++ compiler "
                        "on CPU, Triton on GPU): faster for the 3-layer rows after a minute or "
                        "more of compiling; results agree to float rounding")
    g.add_argument("--fused-anderson", action="store_true",
                   help="run Anderson's per-iteration bookkeeping (the DEQ rows' forward "
                        "solves) as one C++ kernel on the CPU (built at the first run: needs a "
                        "C++ compiler and ninja): their training steps 1.2-1.7x faster at paper "
                        "settings; results agree to float rounding; no effect on a GPU")
    g.add_argument("--limit-train-batches", type=parse_batches, default=None,
                   help="train on this many batches (whole number) or this fraction (0-1] "
                        "per epoch")
    g.add_argument("--limit-test-batches", type=parse_batches, default=None,
                   help="validate/test on this many batches or this fraction")
    g.add_argument("--synthetic-sizes", type=synthetic_sizes, default=None, metavar="TRAIN,TEST",
                   help="images in the synthetic set (default 2000,500)")
    g.add_argument("--results", default="results", help="the results store, a directory of sweeps "
                                                        "(default results/)")
    g.add_argument("--name", type=_sweep_name, default=default_name,
                   help="sweep name: runs go to RESULTS/NAME/RUN/ (default "
                        + (default_name or "the --table name; quick with --quick") + ")")
    g.add_argument("--accelerator", default="auto", help="Lightning accelerator (default auto)")
    g.add_argument("--devices", type=devices_arg, default=1,
                   help="devices per run; N > 1 trains each run with Lightning DDP (default 1)")
    g.add_argument("--project", default="hopfield-deq", help="W&B project (default hopfield-deq)")
    g.add_argument("--entity", default=None, help="W&B entity (default: your default entity)")


@dataclass(frozen=True)
class SweepOptions:
    """``sweep.py``'s command line as typed values: the grid, the shared run settings
    (:func:`add_run_args`, read back by :meth:`RunConfig.from_args`) and the mode."""

    experiments: list[Experiment]  # the selected rows x depths, in table order
    seeds: list[int]
    dataset: str
    name: str
    results: str = "results"
    data_dir: str | None = None
    no_download: bool = False
    epochs: int | None = None
    lr: float | None = None
    fast: bool = False
    compile: bool = False
    fused_anderson: bool = False
    limit_train_batches: Batches = None
    limit_test_batches: Batches = None
    synthetic_sizes: dict[str, int] | None = None
    accelerator: str = "auto"
    devices: int | str = 1
    project: str = "hopfield-deq"
    entity: str | None = None
    offline: bool = False
    no_wandb: bool = False
    dry_run: bool = False
    join: str | None = None
    count: int | None = None
    quick: bool = False
    workers: int = 1

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> "SweepOptions":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in vars(args).items() if k in names})
