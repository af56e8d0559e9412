"""The registry of update structures (deq_modules/hopfield/__init__.py) and the model objects
(models.py): a structure defined in this file alone runs through a run, the table and the
figures."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deq_modules import experiments
from deq_modules.experiments import Experiment, get_experiment, register_table
from deq_modules.hopfield import STRUCTURES, Structure, get_structure, register_structure
from deq_modules.hopfield.base import LayeredHopfield
from deq_modules.hopfield.models import CHN, HAM, get_model
from deq_modules.lit import LitHopfieldDEQ


class SequentialFunction(LayeredHopfield):
    """A toy structure: the layers updated one after the other, first to last, each from the
    newest state of its neighbours (Gauss-Seidel by layer); the state holds every layer."""

    def __init__(self, layers, model="ham", sweeps: int = 1):
        super().__init__(layers, model)
        self.sweeps = sweeps
        self.state_size = sum(self.sizes)

    def forward(self, Ux, z):
        act = self.model.activation
        s = list(z.split(self.sizes, dim=1))
        r = {k: act(sk) for k, sk in enumerate(s)}
        for _ in range(self.sweeps):
            for k in range(len(s)):
                s[k] = self.model.update(self.drives([k], Ux, r)[0], r[k])
                r[k] = act(s[k])
        return torch.cat(s, dim=1)

    def readout(self, z):
        return z[:, -self.n_out:]

    def layer_states(self, z, Ux=None):
        return list(z.split(self.sizes, dim=1))

    def from_layer_states(self, states):
        return torch.cat(list(states), dim=1)


TOY = Structure("toy_sequential", SequentialFunction, label="sequential", updates="sequential",
                colour="tab:brown")
TOY_LAYERS = (784, 24, 10)


def toy_row(row: str, solver: str) -> Experiment:
    return Experiment(row=row, depth=3, model="ham", structure=TOY.name, solver=solver,
                      damping=0.0, forward_iter=12, backward_iter=2, lr=0.01, epochs=1,
                      schedule_epochs=1, base_row="TOY", local_updates=1, published_iters=None,
                      published_acc=None, architecture=TOY_LAYERS, table="toy")


@pytest.fixture
def toy_structure():
    """The toy structure registered, and only for the test."""
    register_structure(TOY)
    yield TOY
    del STRUCTURES[TOY.name]


@pytest.fixture
def toy_table(toy_structure):
    """A table of two rows of the toy structure (Picard and Anderson), only for the test."""
    rows = register_table("toy", [toy_row("TOY", "picard"), toy_row("TOY-DEQ", "anderson")])
    yield rows
    del experiments.TABLES["toy"]


def test_the_papers_structures_are_registered():
    assert list(STRUCTURES) == ["onematrix", "evenodd"]
    assert get_structure("evenodd").updates == "even-odd"
    assert get_structure("onematrix").updates == "synchronous"
    assert type(get_structure("evenodd").build([6, 5, 4], "chn")).__name__ == "EvenOddFunction"


def test_unknown_names_are_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="oddeven.*onematrix.*evenodd"):
        get_structure("oddeven")
    with pytest.raises(ValueError, match="oddeven"):
        Experiment(row="X", depth=3, model="ham", structure="oddeven", solver="picard",
                   damping=0.0, forward_iter=1, backward_iter=1, lr=0.1, epochs=1,
                   schedule_epochs=1, base_row="X", local_updates=1, published_iters=None,
                   published_acc=None)
    with pytest.raises(ValueError, match="'hopfield'.*chn.*ham"):
        get_model("hopfield")


def test_a_taken_name_or_a_bad_structure_is_refused(toy_structure):
    with pytest.raises(ValueError, match="toy_sequential"):
        register_structure(TOY)
    with pytest.raises(ValueError, match="Even-Odd"):
        Structure("Even-Odd", SequentialFunction, label="x", updates="x", colour="k")
    with pytest.raises(ValueError, match="1.5"):
        Structure("x", SequentialFunction, label="x", updates="x", colour="k",
                  first_step_saving=1.5)
    with pytest.raises(ValueError, match="no_colon"):
        Structure("x", "no_colon", label="x", updates="x", colour="k")


def test_build_gives_the_map_only_the_options_it_takes(toy_structure):
    f = toy_structure.build([6, 5, 4], "chn", inner_iter=3, inner_damping=0.2)
    assert isinstance(f, SequentialFunction) and isinstance(f.model, CHN)
    g = get_structure("evenodd").build([6, 5, 4], "chn", inner_iter=3, inner_damping=0.2)
    assert (g.inner_iter, g.inner_damping) == (3, 0.2)
    h = get_structure("onematrix").build([6, 5, 4], HAM(), inner_iter=3)
    assert isinstance(h.model, HAM)


def test_the_toy_ham_map_descends_the_energy(toy_structure):
    """The sequential HAM update is block-coordinate descent of the shared energy: each step
    lowers it, so the toy map is a real Hopfield structure, not a stub."""
    torch.manual_seed(0)
    f = toy_structure.build([7, 6, 5, 4, 3], "ham").double()
    x = torch.rand(4, 7, dtype=torch.float64)
    Ux = f.preprocess_inputs(x)
    z = torch.randn(4, f.state_size, dtype=torch.float64)
    energies = []
    for _ in range(5):
        z = f(Ux, z)
        energies.append(f.energy(x, z))
    for before, after in zip(energies, energies[1:]):
        assert torch.all(after <= before + 1e-12)


def test_register_table_checks_its_rows(toy_structure):
    with pytest.raises(ValueError, match="table2"):
        register_table("table2", [toy_row("TOY", "picard")])
    with pytest.raises(ValueError, match="'TOY'"):
        register_table("toy", [toy_row("TOY-DEQ", "anderson")])  # its base row is missing
    with pytest.raises(ValueError, match="HAM-L3"):
        register_table("toy", [get_experiment("HAM", 3)])
    assert "toy" not in experiments.TABLES


def test_a_new_structure_runs_through_a_run_the_table_and_the_figures(toy_table, tmp_path,
                                                                        capsys):
    from paper_figures import curves, energy, table
    from paper_figures.__main__ import main as paper_figures_main
    from paper_figures.runs import local_records
    from runner.config import RunConfig
    from runner.run import run_experiment

    assert "TOY" in experiments.ALL_ROWS and get_experiment("TOY-DEQ", 3).table == "toy"
    module = LitHopfieldDEQ(list(TOY_LAYERS), structure=TOY.name)
    assert isinstance(module.f, SequentialFunction)

    cfg = RunConfig(row="TOY", depth=3, seed=0, dataset="synthetic", results=str(tmp_path),
                    sweep="toy", accelerator="cpu", limit_train_batches=3,
                    limit_test_batches=1, synthetic_kwargs=dict(n_train=256, n_test=64))
    summary = run_experiment(cfg)
    assert summary["status"] == "finished"

    records = local_records(tmp_path, "toy")
    stats = {s.exp.row: s for s in table.table_rows(records)}
    assert set(stats) == {"TOY", "TOY-DEQ"}  # the table is the toy's, its rows in order
    toy = stats["TOY"]
    assert toy.n == 1 and math.isfinite(toy.iters_stats[0]) and 0 < toy.iters_stats[0] <= 12
    assert 0.0 <= toy.acc_stats[0] <= 100.0 and toy.speedup == pytest.approx(1.0)
    assert stats["TOY-DEQ"].n == 0

    _, pooled = energy.make_figure(records)
    assert pooled == {"TOY-L3": 1, "TOY-DEQ-L3": 0}
    _, read = curves.make_figure(records)
    assert read == {"TOY-L3": 1, "TOY-DEQ-L3": 0}

    out = tmp_path / "figures"
    assert paper_figures_main(["--results", str(tmp_path), "--sweep", "toy",
                               "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| 3 | TOY |" in printed and "Table 'toy'" in (out / "table2.md").read_text()
    row = next(line for line in (out / "table2.csv").read_text().splitlines()
               if ",TOY," in line)
    numbers = [float(v) for v in row.split(",") if v and v[0].isdigit()]
    assert numbers and all(np.isfinite(numbers))
    for name in ("table2.md", "table2.tex", "claims.md", "energy.pdf", "energy.png",
                 "curves.pdf", "curves.png", "fig3.png", "fig4.png"):
        assert (out / name).stat().st_size > 0, name
