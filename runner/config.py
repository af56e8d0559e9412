"""What defines one run, and the one mapping between it and a command line.

Every run option is one field of :class:`RunConfig` whose metadata (:func:`option`) holds its
flag, its help, whether it defines the run (part of its identity in ``config.json``) and
whether it is machine-only. From them come :func:`add_run_args` (the options ``train.py`` and
``sweep.py`` share), :meth:`RunConfig.from_args` (a parsed command line back to a run),
:meth:`RunConfig.to_argv` (a ``train.py`` command line for the same run: DDP subprocesses),
:data:`DEFINING_KEYS`, and the command a W&B sweep's agents run
(:func:`runner.wandb_sweep.agent_command`, ``sweep.yaml``). A new option is one field here.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Literal

from deq_modules.data.batches import batches_per_device
from deq_modules.data.names import DATASETS, SPLIT_IMAGES
from deq_modules.experiments import TRAINING_RECIPE, Experiment, Mode, get_experiment

from .names import DEFAULT_DATASET, DEFAULT_PROJECT, DEFAULT_RESULTS, DEFAULT_TABLE
from .store import check_name, jsonable, run_dir

WANDB_MODES = ("online", "offline", "disabled")
Batches = int | float | None
# Keys of Mode.record() that fast runs stored before them lack, with the value that computes what
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


def devices_arg(text: str) -> int | str:
    """``--devices``: a count (``2``), ``auto`` or device indices (``0,1``)."""
    try:
        return check_devices(int(text) if text.strip().lstrip("+-").isdigit() else text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def sizes_text(sizes: dict[str, int]) -> str:
    """``synthetic_kwargs`` as ``--synthetic-sizes`` takes it: ``TRAIN,TEST``."""
    return f"{sizes['n_train']},{sizes['n_test']}"


@dataclass(frozen=True)
class Option:
    """What a :class:`RunConfig` field is to the run and on the command line.

    ``defines``: part of the run's identity: a stored run (its ``config.json``) is reused only
    if it matches (:data:`DEFINING_KEYS`). A defining option added later must default to what
    the runs stored before it computed: a ``config.json`` without the key counts as that
    default (otherwise increase ``deq_modules.experiments.TRAINING_RECIPE``).
    ``machine``: machine-only (where the data is, the accelerator, kernels that change rounding
    only): recorded, never compared, and each machine of a W&B sweep has its own.
    ``agent``: how the command of a W&B sweep's agents fixes it: ``"always"``, ``"given"``
    (when not the default) or ``"never"`` (machine-only options, and those W&B sets itself).

    The rest is the flag: ``flag`` (``None``: not an option of the shared command line),
    ``help`` (``{default}`` is replaced by the parser's default), ``type``/``choices``/
    ``metavar`` as argparse takes them, ``unset`` (the parser's default is ``None`` and the
    entry point fills it in: ``--dataset``, ``--name``), ``negate`` (a boolean that the flag
    sets to ``False``: ``--no-download``), ``text`` (the value as command-line text).
    """

    flag: str | None = None
    help: str = ""
    defines: bool = False
    machine: bool = False
    agent: Literal["always", "given", "never"] = "given"
    type: Callable[[str], Any] | None = None
    choices: tuple | None = None
    metavar: str | None = None
    unset: bool = False
    negate: bool = False
    text: Callable[[Any], str] = str

    @property
    def dest(self) -> str:
        """The attribute argparse gives the parsed value (``--no-download``: ``no_download``)."""
        return self.flag.lstrip("-").replace("-", "_")

    def add_to(self, group: Any, default: Any) -> None:
        """Declare the flag in an argparse ``group``, with the field's ``default``."""
        if isinstance(default, bool):
            group.add_argument(self.flag, action="store_true", help=self.help)
            return
        extra = {k: v for k, v in (("type", self.type), ("choices", self.choices),
                                   ("metavar", self.metavar)) if v is not None}
        group.add_argument(self.flag, default=default, help=self.help.format(default=default),
                           **extra)

    def argv(self, value: Any, sep: str = " ") -> list[str]:
        """``value`` as command-line words (``sep="="``: one word ``--flag=value``); a boolean
        is the bare flag or nothing, ``None`` nothing."""
        if isinstance(value, bool):
            return [self.flag] if value != self.negate else []
        if value is None:
            return []
        text = self.text(value)
        return [f"{self.flag}={text}"] if sep == "=" else [self.flag, text]


OPTION = "run_option"  # the key of an Option in a RunConfig field's metadata


def option(default: Any = MISSING, **settings: Any) -> Any:
    """A :class:`RunConfig` field with its :class:`Option` (``settings``) as metadata."""
    opt = Option(**settings)
    if opt.machine and opt.agent != "never":
        opt = replace(opt, agent="never")  # each machine has its own
    return field(default=default, metadata={OPTION: opt})


@dataclass
class RunConfig:
    """Everything that defines one run; the registry fills in the paper's settings.

    The fields' metadata (:func:`option`) says which of them define the run and how each
    appears on the command line; the audit of why each does or does not define it is in the
    comments (issue 24).
    """

    # Which run: given by the entry points (train.py --row/--layers or --experiment, --seed;
    # sweep.py's grid), and in a W&B sweep the grid's parameters (experiment, seed).
    row: str = option(defines=True)
    depth: int = option(defines=True)
    seed: int = option(defines=True)  # the initialisation and the batches
    # Shared options, in the order of --help. defines=True: changes what the run computes.
    dataset: str = option(
        DEFAULT_DATASET, flag="--dataset", defines=True, agent="always", choices=DATASETS,
        unset=True, help=f"dataset (default {DEFAULT_DATASET}, the paper's)")
    data_dir: str | None = option(  # where the same (checked) files are
        None, flag="--data-dir", machine=True,
        help="dataset directory (default $HOPFIELD_DATA_DIR or ./data)")
    download: bool = option(
        True, flag="--no-download", negate=True, machine=True,
        help="never download; fail with a clear error if the files are missing")
    epochs: int | None = option(  # None: the row's epochs from the registry
        None, flag="--epochs", defines=True, type=positive_int,
        help="epochs to train (default: the row's, 10 for most); the learning-rate schedule "
             "stays the paper's 10 epochs")
    lr: float | None = option(  # None: the row's learning rate from the registry
        None, flag="--lr", defines=True, type=positive_float,
        help="learning rate (default: the row's, 0.01 or 0.005); recorded in the run")
    # the fast mode (deq_modules.experiments.FAST, recorded as fast_mode: RunConfig.mode):
    # tolerance, backward, precision, validation: another gradient
    fast: bool = option(
        False, flag="--fast", defines=True,
        help="train in the fast mode: each sample's forward solve stops at the convergence "
             "tolerance and leaves the batch, and the backward computes the paper's "
             "unrolled-steps gradient at the fixed point (validation stops at the tolerance "
             "too; the test keeps paper settings); recorded in the run's config")
    # compile_f, fused_anderson (and accelerator): other kernels, the same arithmetic; training
    # can amplify rounding (README, "--workers"), so they are recorded (config.json, the
    # summary's "device") and a run may resume on another machine
    compile_f: bool = option(
        False, flag="--compile", machine=True,
        help="evaluate the Hopfield map through torch.compile (needs a C++ compiler on CPU, "
             "Triton on GPU): faster for the 3-layer rows after a minute or more of "
             "compiling; results agree to float rounding")
    fused_anderson: bool = option(
        True, flag="--no-fused-anderson", negate=True, machine=True,
        help="run Anderson's per-iteration bookkeeping (the DEQ rows' solves) as tensor "
             "operations instead of the default C++ kernel (CPU float32 states; built at the "
             "first run with a C++ compiler and ninja, or skipped with a warning where it "
             "cannot be); results agree to float rounding; a GPU always uses the operations")
    limit_train_batches: Batches = option(  # what is trained on
        None, flag="--limit-train-batches", defines=True, type=parse_batches,
        help="train on this many batches (whole number) or this fraction (0-1] per epoch")
    limit_test_batches: Batches = option(  # what is validated and tested on
        None, flag="--limit-test-batches", defines=True, type=parse_batches,
        help="validate/test on this many batches or this fraction")
    synthetic_kwargs: dict[str, Any] | None = option(
        None, flag="--synthetic-sizes", defines=True, type=synthetic_sizes,
        metavar="TRAIN,TEST", text=sizes_text,
        help="images in the synthetic set (default 2000,500)")
    results: str = option(  # where results go
        DEFAULT_RESULTS, flag="--results", help="the results store, a directory of sweeps (default {default}/)")
    sweep: str = option(  # a label of the runs, and their folder (first in the agents' command)
        DEFAULT_TABLE, flag="--name", agent="always", type=_sweep_name, unset=True,
        help="sweep name: runs go to RESULTS/NAME/RUN/ (default {default})")
    accelerator: str = option(
        "auto", flag="--accelerator", machine=True,
        help="Lightning accelerator (default {default})")
    # DDP over N ranks: each step averages N batches (N x the batch, 1/N the steps) and the
    # test runs N x the batch limit on N shards (padded); compared as the number of ranks
    # (2 == "0,1"). W&B agents run one device per run.
    devices: int | str = option(
        1, flag="--devices", defines=True, type=devices_arg,
        help="devices per run; N > 1 trains each run with Lightning DDP (default {default})")
    # W&B: where the logs go (under a W&B sweep agent: the agent's project and entity)
    wandb_project: str = option(
        DEFAULT_PROJECT, flag="--project", agent="never",
        help="W&B project (default {default})")
    wandb_entity: str | None = option(
        None, flag="--entity", agent="never",
        help="W&B entity (default: your default entity)")
    wandb_mode: str = "disabled"  # train.py --wandb; sweep.py --offline, --no-wandb
    wandb_run_id: str | None = None  # set by a W&B agent whose run is already started

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
    def mode(self) -> Mode:
        """How the run trains: the paper's settings or the fast mode (``--fast``)."""
        return Mode.of(self.fast)

    @property
    def directory(self) -> Path:
        return run_dir(self.results, self.sweep, self.name)

    @property
    def planned_epochs(self) -> int:
        return self.epochs if self.epochs is not None else self.experiment.epochs

    def to_dict(self) -> dict[str, Any]:
        """What ``config.json`` holds (flat keys, the registry entry under ``experiment``)."""
        return {**asdict(self), "experiment": self.experiment.to_dict(), "run_name": self.name,
                "epochs": self.planned_epochs, "fast_mode": self.mode.record(),
                "recipe": TRAINING_RECIPE}

    def differences(self, stored: dict[str, Any]) -> list[str]:
        """The defining settings in which a stored ``config.json`` differs from this run (a
        defining option the stored run lacks counts at its default: see :class:`Option`)."""
        mine = jsonable(self.to_dict())  # the stored values went through the same conversion
        stored = {**jsonable(OPTION_DEFAULTS), **stored}
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
        return cls(**{**run_settings(args), **run})

    def to_argv(self) -> list[str]:
        """``train.py`` arguments that rebuild this run (``wandb_run_id`` aside)."""
        argv = ["--experiment", self.experiment.key, "--seed", str(self.seed),
                "--wandb", self.wandb_mode]
        for name, opt in CLI_OPTIONS.items():
            argv += opt.argv(getattr(self, name))
        return argv


def run_options() -> dict[str, tuple[Field, Option]]:
    """Every :class:`RunConfig` field with an :class:`Option`, by name, in field order."""
    return {f.name: (f, f.metadata[OPTION]) for f in fields(RunConfig) if OPTION in f.metadata}


# The options of the shared command line, by RunConfig field, in the order of --help.
CLI_OPTIONS = {name: opt for name, (_, opt) in run_options().items() if opt.flag}
# The defaults of the shared options (what a stored run without the key had).
OPTION_DEFAULTS = {name: f.default for name, (f, opt) in run_options().items()
                   if opt.flag and f.default is not MISSING}
# The keys of config.json that decide what a run computes: a stored run is reused only if they
# match. The defining fields, and what RunConfig.to_dict derives from them: the registry entry
# (``experiment``: model, solver, iterations, lr, batch), the fast mode's settings
# (``fast_mode``) and the training procedure's version (``recipe``,
# deq_modules.experiments.TRAINING_RECIPE).
DEFINING_FIELDS = tuple(name for name, (_, opt) in run_options().items() if opt.defines)
DEFINING_KEYS = (*DEFINING_FIELDS, "fast_mode", "experiment", "recipe")


def run_settings(args: Any) -> dict[str, Any]:
    """The :class:`RunConfig` keywords that the shared options of a parsed command line give
    (an option left unset, ``None``, at the field's default)."""
    settings = {}
    for name, opt in CLI_OPTIONS.items():
        value = getattr(args, opt.dest)
        if opt.negate:
            value = not value
        settings[name] = OPTION_DEFAULTS[name] if value is None else value
    return settings


def add_run_args(parser: argparse.ArgumentParser, default_name: str | None) -> None:
    """The options every entry point shares (the :class:`RunConfig` fields with a flag);
    ``default_name``: the default of ``--name``."""
    group = parser.add_argument_group("run settings (paper settings where not given)")
    for name, opt in CLI_OPTIONS.items():
        default = OPTION_DEFAULTS[name]
        if name == "sweep" and default_name is None:  # sweep.py: the name follows --table
            opt = replace(opt, help=opt.help.replace("{default}", "the --table name; quick "
                                                                  "with --quick"))
        opt.add_to(group, default_name if name == "sweep" else None if opt.unset else default)
    # the kernel became the default; the old opt-in flag is still accepted, and does nothing
    group.add_argument("--fused-anderson", action="store_true", help=argparse.SUPPRESS)
