import csv
import math
import re
from types import SimpleNamespace

import pytest

from deq_modules.experiments import EXPERIMENTS, get_experiment
from paper_figures import table
from paper_figures.runs import local_records, record_from, wandb_records

N_COLUMNS = len(table.HEADER)


def stats_by_key(store, sweep="table2"):
    return {s.exp.key: s for s in table.table_rows(local_records(store, sweep))}


def markdown_body(text):
    """The data rows of the markdown table, as lists of cells."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert [c.strip() for c in rows[0].strip("|").split("|")] == list(table.HEADER)
    assert set(rows[1].replace("|", "").split()) <= {"---", "---:"}
    return [[c.strip() for c in line.strip("|").split("|")] for line in rows[2:]]


def test_means_and_sample_stds_match_hand_computation(store):
    rows = stats_by_key(store)
    ham = rows["HAM-L3"]  # iterations 12, 11, 13; accuracy 97.8, 98.0, 97.9 %
    assert ham.n == 3 and sorted(ham.seeds) == [0, 1, 2]
    assert ham.iters_stats == pytest.approx((12.0, 1.0))
    assert ham.acc_stats == pytest.approx((97.9, 0.1))
    eo_deq = rows["HAM-EO-DEQ-L3"]  # 6 and 7; 98.1 and 97.7 %
    assert eo_deq.iters_stats == pytest.approx((6.5, math.sqrt(0.5)))
    assert eo_deq.acc_stats == pytest.approx((97.9, math.sqrt(0.08)))
    assert rows["HAM-EO-L5"].iters_stats == (18.0, None)  # a single seed: no std
    assert rows["HAM-DEQ-L3"].n == 0 and rows["HAM-DEQ-L3"].iters_stats == (None, None)


def test_mean_std_is_the_sample_standard_deviation():
    assert table.mean_std([]) == (None, None)
    assert table.mean_std([3.0]) == (3.0, None)
    assert table.mean_std([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, math.sqrt(5 / 3)))


def test_speedup_is_base_over_iterations_times_local_updates(store):
    rows = stats_by_key(store)
    assert rows["HAM-L3"].speedup == pytest.approx(1.0)
    assert rows["HAM-EO-DEQ-L3"].speedup == pytest.approx(12.0 / 6.5)
    assert get_experiment("CHN-EO", 3).local_updates == 20
    assert rows["CHN-EO-L3"].speedup == pytest.approx(39.0 / (17.0 * 20))  # base: CHN-3ep
    assert rows["HAM-DEQ-L7"].speedup == pytest.approx(60.0 / 50.0)
    assert rows["HAM-EO-L5"].speedup is None  # HAM at 5 layers has no results
    assert rows["CHN-10ep-L3"].speedup is None  # no results of its own
    # The paper's speedups follow from the published iterations by the same definition.
    assert rows["CHN-10ep-L3"].paper_speedup == pytest.approx(39.1 / 75.5)
    assert rows["CHN-EO-L3"].paper_speedup == pytest.approx(39.1 / (16.8 * 20))


def test_failed_and_running_runs_are_counted_not_used(store):
    rows = stats_by_key(store)
    assert rows["HAM-L3"].not_counted == {"failed": ["HAM-L3-s3"], "running": ["HAM-L3-s4"]}
    assert rows["HAM-DEQ-L3"].not_counted == {"failed": ["HAM-DEQ-L3-s0"]}
    lines = table.status_lines(local_records(store, "table2"))
    assert lines[0] == "15 runs read; 12 finished and counted."
    assert "Not counted, failed: 2 (HAM-DEQ-L3-s0, HAM-L3-s3)." in lines
    assert "Not counted, running: 1 (HAM-L3-s4)." in lines


def test_all_files_are_written_in_registry_order(store, tmp_path, capsys):
    out = tmp_path / "figures"
    assert table.main(["--results", str(store), "--sweep", "table2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    md = (out / "table2.md").read_text()
    assert md in printed
    body = markdown_body(md)
    assert len(body) == len(EXPERIMENTS) == 17 and all(len(r) == N_COLUMNS for r in body)
    assert ([(int(r[0]), r[1].split(" [")[0]) for r in body]
            == [(e.depth, e.row) for e in EXPERIMENTS])
    by_key = {f"{r[1].split(' [')[0]}-L{r[0]}": r for r in body}
    assert by_key["HAM-EO-DEQ-L3"][2:] == ["6.5 (0.7)", "6.6 (0.2)", "1.8x", "1.8x",
                                           "97.9 (0.3)", "97.9 (0.1)", "0.0 (0.0)", "2"]
    assert by_key["HAM-L3"][8] == "3.0 (3.0)"  # 3, 0 and 6 test samples never converged
    # A single seed has no standard deviation: "-", not a misleading "(0.0)".
    assert by_key["HAM-EO-L5"][2] == "18.0 (-)" and by_key["HAM-EO-L5"][6] == "97.1 (-)"
    assert by_key["HAM-L7"][8] == "40.0 (-)"
    assert by_key["CHN-EO-L3"][4:6] == ["0.1x", "0.1x"]
    assert by_key["HAM-L3"][9] == "3 (1 failed, 1 running)"
    # A row without results shows what is missing; the published side is always there.
    assert by_key["HAM-DEQ-L3"][2] == by_key["HAM-DEQ-L3"][6] == "—"
    assert by_key["HAM-DEQ-L3"][4] == "" and by_key["HAM-DEQ-L3"][9] == "0 (1 failed)"
    assert by_key["HAM-DEQ-L3"][8] == "—"
    for exp in EXPERIMENTS:  # published columns are the registry's numbers
        row = by_key[exp.key]
        assert row[3] == "{:.1f} ({:.1f})".format(*exp.published_iters)
        assert row[7] == "{:.1f} ({:.1f})".format(*exp.published_acc)
    # Footnotes come from the registry's notes, one number per distinct note.
    assert by_key["CHN-EO-L3"][1] == "CHN-EO [2]" and by_key["CHN-EO-DEQ-L3"][1] == "CHN-EO-DEQ [2]"
    assert f"[2] {get_experiment('CHN-EO', 3).note}" in md.splitlines()
    assert "Not counted, running: 1 (HAM-L3-s4)." in md


def test_csv_holds_full_precision_and_the_published_numbers(store, tmp_path):
    paths = table.write_table(local_records(store, "table2"), tmp_path, "test")
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["key"] for r in rows] == [e.key for e in EXPERIMENTS]
    for r, exp in zip(rows, EXPERIMENTS):
        assert (float(r["paper_iters_mean"]), float(r["paper_iters_std"])) == exp.published_iters
        assert (float(r["paper_acc_mean"]), float(r["paper_acc_std"])) == exp.published_acc
    eo_deq = next(r for r in rows if r["key"] == "HAM-EO-DEQ-L3")
    assert float(eo_deq["iters_std"]) == pytest.approx(math.sqrt(0.5))
    assert float(eo_deq["speedup"]) == pytest.approx(12.0 / 6.5) and eo_deq["seeds"] == "0 1"
    ham = next(r for r in rows if r["key"] == "HAM-L3")
    assert (float(ham["not_converged"]), float(ham["not_converged_std"])) == (3.0, 3.0)
    single = next(r for r in rows if r["key"] == "HAM-EO-L5")
    assert (single["iters_mean"], single["iters_std"]) == ("18.0", "")  # no std of one seed
    empty = next(r for r in rows if r["key"] == "HAM-DEQ-L3")
    assert (empty["iters_mean"], empty["speedup"], empty["n_failed"]) == ("", "", "1")


def test_latex_is_a_well_formed_booktabs_tabular(store, tmp_path):
    tex = table.write_table(local_records(store, "table2"), tmp_path, "test")["tex"].read_text()
    tabular = tex[: tex.index(r"\end{tabular}") + len(r"\end{tabular}")]
    spec = re.match(r"\\begin\{tabular\}\{([lrc]+)\}", tabular)
    assert spec and len(spec.group(1)) == N_COLUMNS
    assert tabular.count(r"\begin{tabular}") == tabular.count(r"\end{tabular}") == 1
    assert tabular.count(r"\toprule") == tabular.count(r"\bottomrule") == 1
    lines = [line for line in tabular.splitlines() if line.endswith(r"\\")]
    data = [line for line in lines if re.match(r"\d+ & ", line)]
    assert len(data) == 17 and len(lines) == 17 + 2  # two header lines
    for line in data:  # every data row has every column; no unescaped special characters
        assert len(re.findall(r"(?<!\\)&", line)) == N_COLUMNS - 1
    assert not re.search(r"(?<!\\)[#%_]", tex) and "—" not in tex
    assert tabular.count(r"\midrule") == 3  # after the header, between 3/5 and 5/7 layers
    assert tex.count("{") == tex.count("}")
    assert r"CHN-EO\textsuperscript{2}" in tex


def test_identity_comes_from_config_experiment_or_run_name():
    local = record_from("x", {"experiment": {"row": "HAM-EO", "depth": 5}, "seed": 3}, {},
                        "running")
    assert (local.row, local.depth, local.seed) == ("HAM-EO", 5, 3)
    by_name = record_from("CHN-EO-DEQ-L3-s4", {}, {}, "failed")
    assert (by_name.row, by_name.depth, by_name.seed) == ("CHN-EO-DEQ", 3, 4)


class FakeRun(SimpleNamespace):
    """The attributes of ``wandb.apis.public.Run`` that wandb_records reads."""


def test_wandb_records_feed_the_same_statistics():
    def summary(iters, acc):
        return {"test/iters_to_converge": iters, "test/acc": acc, "_step": 9,
                "iters_rule": "papers"}

    runs = [
        FakeRun(name="HAM-L3-s0", state="finished", config={"experiment": "HAM-L3", "seed": 0},
                summary_metrics=summary(12.0, 0.978)),
        FakeRun(name="HAM-L3-s1", state="finished", config={"experiment": "HAM-L3", "seed": 1},
                summary_metrics=summary(11.0, 0.980)),
        # an older client: no summary_metrics, the summary object's JSON dict
        FakeRun(name="HAM-EO-DEQ-L3-s0", state="finished",
                config={"experiment": "HAM-EO-DEQ-L3", "seed": 0},
                summary=SimpleNamespace(_json_dict=summary(6.0, 0.981))),
        FakeRun(name="HAM-L3-s2", state="crashed", config={"experiment": "HAM-L3", "seed": 2},
                summary_metrics={}),
        FakeRun(name="HAM-L3-s3", state="running", config={"experiment": "HAM-L3", "seed": 3},
                summary_metrics={}),
    ]
    api = SimpleNamespace(sweep={"e/p/id": SimpleNamespace(runs=runs)}.__getitem__)
    records = wandb_records("e/p/id", api=api)
    assert [r.status for r in records] == ["finished"] * 3 + ["failed", "running"]
    rows = {s.exp.key: s for s in table.table_rows(records)}
    assert rows["HAM-L3"].iters_stats == pytest.approx((11.5, math.sqrt(0.5)))
    assert rows["HAM-L3"].not_counted == {"failed": ["HAM-L3-s2"], "running": ["HAM-L3-s3"]}
    assert rows["HAM-EO-DEQ-L3"].speedup == pytest.approx(11.5 / 6.0)


def test_the_table_says_how_our_runs_were_trained(tmp_path, fixtures):
    """One line under the title names the dataset, epochs and mode of the counted runs; mixed
    settings are listed with their counts instead of silently averaged under one name."""
    root = tmp_path / "results"
    fast = {"dataset": "fashion-mnist", "epochs": 1, "fast": True}
    for seed in (0, 1):
        fixtures.write_run(root, "HAM", 3, seed, fixtures.finished_summary(10.0, 0.9),
                           config_extra=fast)
    fixtures.write_run(root, "HAM", 3, 2, {"status": "failed"}, config_extra={"dataset": "x"})
    records = local_records(root, fixtures.SWEEP)
    assert table.settings_lines(records) == ["Our runs: fashion-mnist, 1 epoch, fast mode in "
                                             "training."]
    fixtures.write_run(root, "HAM-EO", 3, 0, fixtures.finished_summary(8.0, 0.9),
                       config_extra={"dataset": "fashion-mnist",
                                     "experiment": {"epochs": 10}, "limit_train_batches": 150})
    records = local_records(root, fixtures.SWEEP)
    line, = table.settings_lines(records)
    assert line.startswith("Our runs, mixed settings")
    assert "fashion-mnist, 1 epoch, fast mode in training (2 runs)" in line
    assert ("fashion-mnist, 10 epochs, training batches limited to 150, paper settings (1 run)"
            in line)
    paths = table.write_table(records, tmp_path / "out", "store")
    assert line in paths["md"].read_text()
    assert "mixed settings" in paths["tex"].read_text()


def test_a_non_finite_accuracy_is_damaged_not_averaged(store, fixtures, tmp_path):
    fixtures.write_run(store, "HAM", 3, 1, fixtures.finished_summary(11.0, float("nan")))
    fixtures.write_run(store, "HAM-EO-DEQ", 3, 1, fixtures.finished_summary(7.0, float("inf")))
    records = local_records(store, "table2")
    rows = {s.exp.key: s for s in table.table_rows(records)}
    assert rows["HAM-L3"].n == 2 and rows["HAM-L3"].acc_stats[0] == pytest.approx(97.85)
    assert rows["HAM-L3"].not_counted["damaged"] == ["HAM-L3-s1"]
    assert rows["HAM-EO-DEQ-L3"].n == 1
    assert rows["HAM-EO-DEQ-L3"].acc_stats[0] == pytest.approx(98.1)
    md = table.write_table(records, tmp_path, "test")["md"].read_text()
    numbers = md.split("Not counted")[0]
    assert "nan" not in numbers and "inf" not in numbers
    assert "Not counted, damaged: HAM-L3-s1 (summary.json test/acc is not a finite number" in md


def test_a_run_that_says_running_but_whose_process_is_gone_shows_as_killed(store, fixtures,
                                                                          tmp_path):
    """kill -9 (or a machine that went down) leaves "running" in summary.json and no live
    lock: the table says killed, not running; the run whose trainer holds the lock stays
    running."""
    fixtures.write_run(store, "HAM", 3, 5, {"status": "running"}, metrics=None)
    records = {r.name: r for r in local_records(store, "table2")}
    assert records["HAM-L3-s5"].status == "killed" and records["HAM-L3-s4"].status == "running"
    rows = {s.exp.key: s for s in table.table_rows(list(records.values()))}
    assert rows["HAM-L3"].not_counted["killed"] == ["HAM-L3-s5"]
    md = table.write_table(list(records.values()), tmp_path, "test")["md"].read_text()
    assert "Not counted, running: 1 (HAM-L3-s4)." in md
    assert "Not counted, killed: 1 (HAM-L3-s5)." in md
    assert "| 3 (1 failed, 1 killed, 1 running) |" in md


def test_runs_trained_on_several_devices_say_so_under_the_table():
    from paper_figures.runs import settings_of
    one = settings_of({"dataset": "mnist", "epochs": 1, "devices": 1})
    assert one == "mnist, 1 epoch, paper settings"
    assert settings_of({"dataset": "mnist", "epochs": 1, "devices": "0,1"}) == \
        "mnist, 1 epoch, paper settings, devices 2 (DDP)"


def test_a_neurips_sweep_gets_its_own_table_and_no_claims(tmp_path, fixtures):
    from paper_figures import claims

    root = tmp_path / "results"
    for row, iters in (("N23-HAM", 12.0), ("N23-HAM-EO-DEQ", 6.0)):
        fixtures.write_run(root, row, 3, 0, fixtures.finished_summary(iters, 0.97))
    records = local_records(root, fixtures.SWEEP)
    rows = table.table_rows(records)
    assert [s.exp.row for s in rows] == ["N23-HAM", "N23-HAM-DEQ", "N23-HAM-EO",
                                         "N23-HAM-EO-DEQ"]
    assert rows[-1].speedup == pytest.approx(2.0)
    text = table.to_markdown(rows, records, "src")
    assert text.startswith("The NeurIPS 2023 ablation")
    assert "| 3 | N23-HAM-EO-DEQ [1] | 6.0 (-) | — | 2.0x |  |" in text
    assert claims.check_claims(records) == []
    assert "Verdicts: none: the claims are stated for Table 2" in claims.in_short([])
