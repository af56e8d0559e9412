import pytest

from deq_modules.experiments import (
    ARCHITECTURES, EXPERIMENTS, NEURIPS_EXPERIMENTS, ROWS, Experiment, get_experiment, select, speedup,
)

# The speedup column of Table 2, in table order.
PUBLISHED_SPEEDUP = [0.5, 1, 1.9, 0.1, 0.1, 1, 1.2, 1.5, 1.8, 1, 1.1, 2.0, 2.0, 1, 1.2, 2.1, 2.2]


def test_seventeen_rows_with_unique_keys():
    assert len(EXPERIMENTS) == 17
    assert len({e.key for e in EXPERIMENTS}) == 17
    assert [e.depth for e in EXPERIMENTS] == [3] * 9 + [5] * 4 + [7] * 4


def test_paper_settings():
    for e in EXPERIMENTS:
        assert e.layers == ARCHITECTURES[e.depth]
        assert sum(e.layers[1:]) == 2000  # 2000 hidden + output units at every depth
        damped = e.model == "chn" and e.structure == "onematrix"
        factor = 2 if damped else 1
        assert e.damping == (0.5 if damped else 0.0)
        assert e.forward_iter == {3: 40, 5: 80, 7: 120}[e.depth] * factor
        assert e.backward_iter == {3: 8, 5: 16, 7: 24}[e.depth] * factor
        assert e.backward_kwargs == dict(solver="picard", iter=e.backward_iter, method="backprop")
        assert e.solver == ("anderson" if e.row.endswith("DEQ") else "picard")
        assert e.structure == ("evenodd" if "-EO" in e.row else "onematrix")
        assert e.lr == (0.01 if e.depth == 3 else 0.005)
        assert (e.p_scale, e.g_bound, e.batch_size, e.schedule_epochs) == (1024, 3, 64, 10)
        assert e.epochs == {"CHN-3ep": 3, "CHN-DEQ": 4}.get(e.row, 10)
        assert e.local_updates == (20 if e.row.startswith("CHN-EO") else 1)


def test_published_speedups_follow_from_published_iterations():
    """The registry's bases and local-update counts reproduce the table's speedup column."""
    for e, published in zip(EXPERIMENTS, PUBLISHED_SPEEDUP):
        base = get_experiment(e.base_row, e.depth)
        assert round(speedup(e.published_iters[0], e, base.published_iters[0]), 1) == published


def test_lookup_and_selection_errors():
    assert get_experiment("HAM-EO-DEQ", 5).run_name(2) == "HAM-EO-DEQ-L5-s2"
    with pytest.raises(ValueError, match=r"'HAM-EOO'.*'HAM-EO-DEQ'"):
        get_experiment("HAM-EOO", 3)
    with pytest.raises(ValueError, match=r"'CHN-EO'.*\b5\b.*\[3\]"):
        get_experiment("CHN-EO", 5)
    assert len(select(rows=["HAM", "HAM-EO"], depths=[5, 7])) == 4
    assert len(select()) == 17 and len(ROWS) == 9
    with pytest.raises(ValueError, match=r"\b4\b.*\[3, 5, 7\]"):
        select(depths=[4])
    with pytest.raises(ValueError, match=r"CHN-DEQ\b.*\b5, 7\b.*\b3\b"):
        select(rows=["CHN-DEQ", "HAM"], depths=[3, 5, 7])  # never silently HAM alone


def test_the_neurips_2023_setup_is_its_own_table():
    from deq_modules.experiments import NEURIPS_EXPERIMENTS, TABLES, get_experiment, select

    assert [e.row for e in NEURIPS_EXPERIMENTS] == ["N23-HAM", "N23-HAM-DEQ", "N23-HAM-EO",
                                                    "N23-HAM-EO-DEQ"]
    for e in NEURIPS_EXPERIMENTS:  # docs/papers.md, "The NeurIPS 2023 version"
        assert e.layers == (784, 512, 10) and e.model == "ham" and e.depth == 3
        assert (e.forward_iter, e.backward_iter, e.backward_method) == (40, 8, "full_adjoint")
        assert (e.lr, e.g_bound, e.lr_decay) == (0.01, 10.0, False)
        assert e.backward_kwargs == dict(solver="picard", iter=8, method="full_adjoint")
    assert {(e.structure, e.solver) for e in NEURIPS_EXPERIMENTS} == {
        (s, v) for s in ("onematrix", "evenodd") for v in ("picard", "anderson")}
    assert select(table="neurips") == list(NEURIPS_EXPERIMENTS)
    assert select() == list(TABLES["table2"]) and len(select()) == 17
    assert get_experiment("N23-HAM-EO", 3).table == "neurips"
    with pytest.raises(ValueError, match="'HAM'.*'neurips'"):
        select(["HAM"], table="neurips")
    with pytest.raises(ValueError, match="'neurps'"):
        select(table="neurps")


def test_table_2_configs_keep_their_keys():
    """Fields added for the NeurIPS table are written only where they differ from their
    defaults, so that a stored Table 2 run's config.json still matches."""
    from deq_modules.experiments import get_experiment

    stored = get_experiment("HAM-EO-DEQ", 5).to_dict()
    assert not {"architecture", "lr_decay", "table"} & set(stored)
    assert get_experiment("N23-HAM", 3).to_dict()["lr_decay"] is False


def test_the_3_layer_anderson_rows_solve_with_the_published_variant_the_deeper_ones_with_ours():
    """The variant each measured to need fewer iterations (bench/results-anderson-variants.md);
    ours is the engine's defaults, no options."""
    from deq_core.solvers import PUBLISHED_ANDERSON
    for exp in [*EXPERIMENTS, *NEURIPS_EXPERIMENTS]:
        options = {k: v for k, v in exp.forward_kwargs.items() if k not in ("solver", "iter")}
        published = exp.solver == "anderson" and exp.depth == 3
        assert options == (PUBLISHED_ANDERSON if published else {}), exp.key
    deeper = [e.key for e in EXPERIMENTS if e.solver == "anderson" and e.depth > 3]
    assert deeper == ["HAM-DEQ-L5", "HAM-EO-DEQ-L5", "HAM-DEQ-L7", "HAM-EO-DEQ-L7"]


def test_the_committed_10_epoch_runs_keep_their_identity():
    """Their config.json (Picard runs stored before solver_options existed, Anderson runs with
    the rows' variant) is what the registry writes today: a change of a row's settings that
    would orphan them fails here."""
    import json
    from pathlib import Path
    stored = sorted(Path(__file__).parents[2].glob("docs/reproduction/fmnist-10ep/*/config.json"))
    assert stored, "the committed 10-epoch runs are missing"
    for path in stored:
        config = json.loads(path.read_text())
        exp = Experiment.from_key(config["experiment"]["row"] + f"-L{config['experiment']['depth']}")
        mine = json.loads(json.dumps(exp.to_dict()))
        old = config["experiment"]
        assert mine == old, path.parent.name
        assert ("solver_options" in old) == bool(exp.solver_options), path.parent.name
