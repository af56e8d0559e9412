import lightning as L
import pytest
import torch

from deq_modules import (
    EXPERIMENTS, EvenOddFunction, HopfieldDataModule, LitEvenOddDEQ, LitHopfieldDEQ,
    LitOneMatrixDEQ, OneMatrixFunction, get_experiment, lit_module_for,
)
from deq_modules.lit import epoch_decay

SMALL = [784, 64, 10]


def trainer(tmp_path, **kwargs):
    options = dict(max_epochs=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0, default_root_dir=tmp_path)
    options.update(kwargs)
    return L.Trainer(**options)


@pytest.fixture
def synthetic():
    return HopfieldDataModule("synthetic", batch_size=64,
                              synthetic_kwargs=dict(n_train=1200, n_test=300))


def test_small_ham_eo_deq_learns_synthetic(tmp_path):
    L.seed_everything(0)
    data = HopfieldDataModule("synthetic", batch_size=64,
                              synthetic_kwargs=dict(n_train=2000, n_test=300))
    model = LitEvenOddDEQ([784, 128, 10], model="ham", lr=0.02, schedule_epochs=3,
                          forward_kwargs=dict(solver="anderson", iter=20))
    t = trainer(tmp_path, max_epochs=3, limit_val_batches=1)
    t.fit(model, data)
    for name in ("train/loss_epoch", "val/acc", "val/loss", "train/rel_residual_backward"):
        assert name in t.callback_metrics, name
    result = t.test(model, data, verbose=False)[0]
    assert result["test/acc"] >= 0.9  # measured 0.987


def test_loss_and_micro_accuracy_match_their_definitions(tmp_path, synthetic):
    L.seed_everything(1)
    model = LitOneMatrixDEQ(SMALL, model="ham", forward_kwargs=dict(solver="picard", iter=10))
    result = trainer(tmp_path).test(model, synthetic, verbose=False)[0]
    synthetic.setup("test")
    correct, total, sq = 0, 0, 0.0
    with torch.no_grad():
        for x, y in synthetic.test_dataloader():
            pred = model(x)
            correct += (pred.argmax(1) == y.argmax(1)).sum().item()
            sq += (pred - y).square().sum().item()
            total += x.shape[0]
    assert total == 300
    assert result["test/acc"] == pytest.approx(correct / total, abs=1e-6)
    # Epoch mean of 0.5 * sum / batch, weighted by batch size = 0.5 * total sum / N.
    assert result["test/loss"] == pytest.approx(0.5 * sq / total, rel=1e-4)


def test_learning_rate_decays_linearly_to_a_tenth(tmp_path, synthetic):
    model = LitEvenOddDEQ(SMALL, forward_kwargs=dict(solver="picard", iter=3), lr=0.02,
                          schedule_epochs=4)
    lrs = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    t = trainer(tmp_path, max_epochs=2, limit_train_batches=5, limit_val_batches=0,
                callbacks=[Record()])
    t.fit(model, synthetic)
    # Once per epoch, as published: epoch e of 4 planned runs at 0.02 * (1 - 0.9 e / 3); stopped
    # after 2, the scheduler has stepped twice.
    assert lrs == pytest.approx([0.02] * 5 + [0.02 * (1 - 0.9 / 3)] * 5)
    assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.02 * (1 - 0.9 * 2 / 3))


def test_without_decay_the_learning_rate_stays(tmp_path, synthetic):
    model = LitEvenOddDEQ(SMALL, forward_kwargs=dict(solver="picard", iter=3), lr=0.02,
                          lr_decay=False)
    t = trainer(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=0)
    t.fit(model, synthetic)
    assert t.lr_scheduler_configs == [] and t.optimizers[0].param_groups[0]["lr"] == 0.02


def test_the_papers_schedule_runs_epoch_one_at_lr_and_epoch_ten_at_a_tenth():
    factor = epoch_decay(10)  # LinearLR(start_factor=1, end_factor=0.1, total_iters=9)
    assert [factor(e) for e in range(12)] == pytest.approx(
        [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1])
    assert epoch_decay(1)(0) == 1.0  # a one-epoch schedule runs at lr


@pytest.mark.parametrize("cls", [LitOneMatrixDEQ, LitEvenOddDEQ])
def test_checkpoint_rebuilds_the_model(tmp_path, synthetic, cls):
    model = cls(SMALL, model="chn", forward_kwargs=dict(solver="anderson", iter=15, m=3),
                damping_factor=0.25, inner_iter=3)
    t = trainer(tmp_path, limit_train_batches=2, limit_val_batches=1)
    t.fit(model, synthetic)
    path = tmp_path / "model.ckpt"
    t.save_checkpoint(path)
    loaded = cls.load_from_checkpoint(path)
    assert loaded.deq.forward_kwargs == model.deq.forward_kwargs
    assert loaded.deq.damping_factor == 0.25
    x = torch.rand(5, 784)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_registry_rows_build_their_models():
    for exp in EXPERIMENTS:
        model = lit_module_for(exp)
        f = model.f
        assert isinstance(f, EvenOddFunction if exp.structure == "evenodd" else OneMatrixFunction)
        assert f.model.name == exp.model and tuple(f.layers) == exp.layers
        # Anderson's bookkeeping runs the C++ kernel where it can (the default)
        kernel = {"fused": "auto"} if exp.solver == "anderson" else {}
        assert model.deq.forward_kwargs == dict(exp.forward_kwargs, **kernel)
        assert lit_module_for(exp, fused_anderson=False).deq.forward_kwargs == exp.forward_kwargs
        assert model.deq.damping_factor == exp.damping
        assert model.hparams.lr == exp.lr
    cifar = lit_module_for(EXPERIMENTS[-1], input_size=3072)
    assert cifar.f.layers[0] == 3072


def test_bad_structure_is_refused():
    with pytest.raises(ValueError, match=r"'oddeven'.*'evenodd'"):
        LitHopfieldDEQ(SMALL, structure="oddeven")


def save_unfitted(model, tmp_path, name: str):
    """A checkpoint of ``model`` as the trainer writes it, without training."""
    t = trainer(tmp_path)
    t.strategy.connect(model)
    path = tmp_path / name
    t.save_checkpoint(path)
    return path


def test_a_checkpoint_of_the_other_structure_is_refused(tmp_path):
    saved = {cls: save_unfitted(cls(SMALL, model="chn"), tmp_path, f"{cls.__name__}.ckpt")
             for cls in (LitOneMatrixDEQ, LitEvenOddDEQ)}
    for cls, other, structure, other_structure in ((LitOneMatrixDEQ, LitEvenOddDEQ, "onematrix", "evenodd"),
                                                   (LitEvenOddDEQ, LitOneMatrixDEQ, "evenodd", "onematrix")):
        with pytest.raises(ValueError, match=f"{cls.__name__}.*'{structure}'.*'{other_structure}'"):
            cls.load_from_checkpoint(saved[other])
        with pytest.raises(ValueError, match=f"structure='{other_structure}'"):
            cls(SMALL, structure=other_structure)
        assert cls.load_from_checkpoint(saved[cls]).hparams.structure == structure  # matching: fine
        assert cls(SMALL, structure=structure).hparams.structure == structure
        assert isinstance(LitHopfieldDEQ.load_from_checkpoint(saved[other]).f, type(other(SMALL).f))


def test_defaults_are_the_registry_row_ham_eo_deq_3_layers():
    default, row = LitHopfieldDEQ(), lit_module_for(get_experiment("HAM-EO-DEQ", 3))
    assert isinstance(default.f, EvenOddFunction) and default.f.model.name == "ham" and tuple(default.f.layers) == row.f.layers
    assert default.deq.forward_kwargs == row.deq.forward_kwargs
    assert default.deq.backward_kwargs == row.deq.backward_kwargs
    assert default.deq.damping_factor == row.deq.damping_factor
    assert {k: v for k, v in default.hparams.items() if "kwargs" not in k and k != "layers"} == {
        k: v for k, v in row.hparams.items() if "kwargs" not in k and k != "layers"}


def test_fast_mode_trains_with_the_tolerance_stop_and_evaluates_with_paper_settings():
    from deq_modules.experiments import FAST, PAPER, get_experiment

    exp = get_experiment("HAM-EO-DEQ", 3)
    fast = lit_module_for(exp, input_size=784, mode=FAST)
    assert fast.deq.train_forward_kwargs == dict(exp.forward_kwargs, tol=FAST.tol,
                                                 compact=True, fused="auto")
    assert fast.deq.forward_kwargs == dict(exp.forward_kwargs, fused="auto")
    assert lit_module_for(exp, input_size=784, mode=PAPER).deq.train_forward_kwargs is None
    x = torch.rand(32, 784)
    y = torch.nn.functional.one_hot(torch.randint(0, 10, (32,)), 10).float()
    fast.train()
    fast.training_step((x, y), 0).backward()
    assert fast.deq.last_forward_stats.n_iter < exp.forward_iter
    fast.eval()
    with torch.no_grad():
        fast(x)
    assert fast.deq.last_forward_stats.n_iter == exp.forward_iter


def test_fast_mode_validates_with_its_training_forward_and_tests_with_paper_settings():
    """The per-epoch validation passes of a fast run stop at the tolerance (they only draw the
    learning curves); the test, whose numbers fill the table, runs the paper's count."""
    from dataclasses import replace

    from deq_modules.experiments import FAST, Mode

    exp = get_experiment("HAM-EO-DEQ", 3)
    x = torch.rand(32, 784)
    y = torch.nn.functional.one_hot(torch.randint(0, 10, (32,)), 10).float()

    def iterations(module, step):
        module.eval()
        with torch.no_grad():
            getattr(module, step)((x, y), 0)
        return module.deq.last_forward_stats.n_iter

    fast = lit_module_for(exp, input_size=784, mode=FAST)
    assert fast.val_forward_kwargs == dict(exp.settings(FAST).train_forward, fused="auto")
    assert iterations(fast, "validation_step") < exp.forward_iter
    assert iterations(fast, "test_step") == exp.forward_iter
    fast.eval()
    with torch.no_grad():
        fast(x)  # outside a validation step: the paper's count
    assert fast.deq.last_forward_stats.n_iter == exp.forward_iter
    rebuilt = LitHopfieldDEQ(**fast.hparams)  # what a checkpoint rebuilds
    assert rebuilt.val_forward_kwargs == fast.val_forward_kwargs
    paper = lit_module_for(exp, input_size=784)
    assert paper.val_forward_kwargs is None
    assert iterations(paper, "validation_step") == exp.forward_iter

    kept = lit_module_for(exp, input_size=784, mode=replace(FAST, validation="paper"))
    assert kept.val_forward_kwargs is None
    assert iterations(kept, "validation_step") == exp.forward_iter
    with pytest.raises(ValueError, match=r"validation\b.*'sometimes'.*'paper'"):
        replace(FAST, validation="sometimes")
    with pytest.raises(ValueError, match=r"'fst'.*'fast'"):
        Mode("fst")
    with pytest.raises(ValueError, match=r"val_forward_kwargs\['compact'\]"):
        LitHopfieldDEQ(val_forward_kwargs=dict(solver="picard", iter=5, compact=True))


def test_compile_f_reaches_the_deq_and_the_checkpoint_hyperparameters():
    exp = get_experiment("CHN-EO", 3)
    model = lit_module_for(exp, input_size=784, compile_f=True)
    assert model.deq.compile_f is True and model.hparams["compile_f"] is True
    assert lit_module_for(exp, input_size=784).deq.compile_f is False
    assert LitHopfieldDEQ(**model.hparams).deq.compile_f is True  # what a checkpoint rebuilds


@pytest.mark.parametrize("key", ["HAM-EO-DEQ-L3", "CHN-DEQ-L3", "HAM-EO-DEQ-L5", "HAM-DEQ-L3"])
def test_fast_mode_backward_gives_the_paper_gradients_at_a_fixed_point(key):
    """The fast mode's backward (the adjoint's truncated Neumann series, one state-only
    vector-Jacobian product per step) computes the gradient of the paper's unrolled steps:
    equal when the forward solve has reached the fixed point (float64, tight tolerance)."""
    from deq_modules.experiments import FAST, Experiment

    exp = Experiment.from_key(key)
    assert lit_module_for(exp, mode=FAST).deq.backward_kwargs == dict(
        solver="picard", iter=exp.backward_iter, method="full_adjoint")
    hp = dict(lit_module_for(exp).hparams, layers=[24] + [12] * (exp.depth - 2) + [10])
    hp["forward_kwargs"] = dict(hp["forward_kwargs"], iter=300)
    modules = []
    for backward in (exp.backward_kwargs, exp.settings(FAST).backward):
        torch.manual_seed(0)
        module = LitHopfieldDEQ(**dict(hp, backward_kwargs=backward)).double().train()
        with torch.no_grad():  # small weights: a contraction, so every sample converges
            for p in module.f.parameters():
                p.mul_(0.5)
        modules.append(module)
    x = torch.rand(16, 24, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.arange(16) % 10, 10).double()
    grads = []
    for module in modules:
        module.training_step((x, y), 0).backward()
        assert module.deq.last_forward_stats.rel_residual.max() < 1e-12  # at the fixed point
        grads.append(torch.cat([p.grad.flatten() for p in module.parameters()]))
    paper, fast = grads
    assert modules[1].deq.backward_kwargs["method"] == "full_adjoint"
    assert paper.abs().max() > 0
    assert (fast - paper).norm() / paper.norm() < 1e-9


@pytest.mark.parametrize("key", ["HAM-EO-DEQ-L3", "CHN-EO-L3"])
def test_fast_mode_trains_with_the_compiled_map(key):
    """``--fast --compile``: the Neumann backward's vector-Jacobian products go through one
    graph many times, which a compiled graph with donated buffers refuses; the gradients must
    be the eager ones."""
    from deq_modules.experiments import FAST, Experiment

    exp = Experiment.from_key(key)
    x = torch.rand(16, 40, generator=torch.Generator().manual_seed(0))
    y = torch.nn.functional.one_hot(torch.arange(16) % 10, 10).float()
    grads = []
    for compile_f in (False, True):
        hp = dict(lit_module_for(exp, mode=FAST, compile_f=compile_f).hparams,
                  layers=[40, 20, 10])
        torch.manual_seed(0)
        module = LitHopfieldDEQ(**hp).train()
        module.training_step((x, y), 0).backward()
        assert module.deq.backward_kwargs["method"] == "full_adjoint"
        grads.append(torch.cat([p.grad.flatten() for p in module.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_fast_mode_can_keep_the_paper_backward():
    """``replace(FAST, backward="unrolled")``: the fast mode's forward, the paper's backward;
    an unknown backward is refused with the valid ones."""
    from dataclasses import replace

    from deq_modules.experiments import FAST, Experiment

    exp = Experiment.from_key("HAM-EO-DEQ-L5")
    unrolled = replace(FAST, backward="unrolled")
    assert exp.settings(unrolled).backward == exp.backward_kwargs
    assert lit_module_for(exp, mode=unrolled).deq.backward_kwargs == exp.backward_kwargs
    assert lit_module_for(exp, mode=unrolled).deq.train_forward_kwargs["compact"] is True
    with pytest.raises(ValueError, match=r"backward\b.*'implicit'.*'neumann'"):
        replace(FAST, backward="implicit")


def test_the_mode_is_resolved_once_and_recorded_as_before():
    """``Mode.of(fast)`` gives the two modes a run uses; the fast one records the settings
    that stored fast runs hold as ``fast_mode`` (their identity), the paper one ``None``."""
    from deq_modules.experiments import FAST, PAPER, Experiment, Mode

    assert Mode.of(True) is FAST and Mode.of(False) is PAPER and Mode("fast") == FAST
    assert PAPER.record() is None
    assert FAST.record() == dict(tol=1e-4, precision=None, backward="neumann",
                                 validation="fast", adjoint_precision=None)
    exp = Experiment.from_key("CHN-DEQ-L3")
    paper = exp.settings(PAPER)
    assert (paper.train_forward, paper.val_forward, paper.train_precision) == (None, None, None)
    assert paper.test_forward == exp.forward_kwargs and paper.backward == exp.backward_kwargs
    assert exp.settings(FAST).test_forward == exp.forward_kwargs  # the test: paper settings
    with pytest.raises(ValueError, match=r"tol\b.*-1"):
        Mode("fast", tol=-1)
