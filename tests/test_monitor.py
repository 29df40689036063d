"""Online evaluation while pretraining (issue 11): what is logged, that it changes nothing, and how it fails."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import fashion_mnist_images, needs_fashion_mnist, one_error_line, tensors_of
from sjalign.cli.app import app
from sjalign.errors import SjalignError
from sjalign.jepa import PretrainConfig, ViTConfig, pretrain, read_log
from sjalign.jepa.monitor import EvalSet, embed_images, evaluate_encoder, non_finite, pick_eval_rows
from sjalign.jepa.vit import VisionTransformer
from sjalign.report.curves import curves_data, fig_curves

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL_VIT = ViTConfig(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2)
EVAL_KEYS = {"knn_acc", "probe_acc", "rankme", "participation_ratio", "n_train", "n_test", "seconds"}


def small_config(**kw) -> PretrainConfig:
    base = dict(model="custom", vit=SMALL_VIT, epochs=2, batch_size=64, lr=1e-3, warmup_epochs=1,
                pred_dim=16, pred_depth=1, seed=0, device="cpu")
    return PretrainConfig.from_dict({**base, **kw})  # objective options may be given flat


@pytest.fixture(scope="module")
def data():
    """(train images, eval set) from 320 real Fashion-MNIST states: 256 to train on, 64 held out."""
    from sjalign.data import load_dataset

    images = fashion_mnist_images(320)
    labels = load_dataset("fashion-mnist", max_states=320).labels
    eval_set = EvalSet(images[:200], images[256:], labels[:200], labels[256:])
    return images[:256], eval_set


def test_pick_eval_rows_is_seeded_disjoint_and_capped():
    is_test = np.zeros(100, bool)
    is_test[80:] = True
    train, test, available = pick_eval_rows(is_test, 100, eval_states=50, bank_cap=30)
    assert available == 20 and len(test) == 20 and set(test) <= set(range(80, 100))
    assert len(train) == 30 and set(train) <= set(range(80)) and list(train) == sorted(train)
    again = pick_eval_rows(is_test, 100, eval_states=50, bank_cap=30)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    train, test, available = pick_eval_rows(None, 60, eval_states=5)  # no split: a seeded sixth held out
    assert available == 10 and len(test) == 5 and not set(train) & set(test)


def test_embed_images_is_what_embed_exports():
    from sjalign.encoders.base import pool_tokens

    torch.manual_seed(0)
    vit = VisionTransformer(SMALL_VIT).train()
    x = torch.rand(10, 1, 28, 28)
    z = embed_images(vit, x, torch.device("cpu"), batch_size=3)
    with torch.no_grad():
        ref = pool_tokens(vit.forward_features(x), "mean").numpy()
    np.testing.assert_allclose(z, ref, rtol=1e-5, atol=1e-6)
    assert vit.training  # the mode is restored


def test_evaluate_encoder_without_labels_reports_ranks_only(data):
    _, eval_set = data
    torch.manual_seed(0)
    vit = VisionTransformer(SMALL_VIT)
    unlabelled = EvalSet(eval_set.train_images, eval_set.test_images)
    out = evaluate_encoder(vit, unlabelled, torch.device("cpu"))
    assert out["knn_acc"] is None and out["probe_acc"] is None
    assert 1.0 <= out["rankme"] <= 32 and out["participation_ratio"] > 0
    labelled = evaluate_encoder(vit, eval_set, torch.device("cpu"))
    assert set(labelled) == EVAL_KEYS and 0.1 < labelled["probe_acc"] <= 1 and 0.1 < labelled["knn_acc"] <= 1
    assert labelled["rankme"] == pytest.approx(out["rankme"])


def test_non_finite_names_the_bad_figures():
    assert non_finite({"a": 1.0, "b": None, "c": float("nan"), "d": float("inf"), "e": True}) == ["c", "d"]


@needs_fashion_mnist
def test_pretrain_logs_epoch_0_every_term_and_changes_no_weight(data, tmp_path):
    images, eval_set = data
    cfg = small_config(objective="lejepa", proj_dim=8, num_slices=16)
    summary = pretrain(cfg, images, tmp_path / "eval", eval_set=eval_set, eval_every=2)
    pretrain(cfg, images, tmp_path / "plain")
    log = read_log(tmp_path / "eval")
    assert [r["epoch"] for r in log] == [0, 1, 2]
    assert set(log[0]) == {"epoch", "step", "flops", "eval"} and log[0]["flops"] == 0
    assert "eval" not in log[1] and set(log[2]["eval"]) == EVAL_KEYS  # every 2 epochs, and the last
    assert set(log[1]["terms"]) == {"pred", "sigreg"}
    # the epoch's loss is (1 − λ)·pred + λ·sigreg of the epoch means
    lam = cfg.reg_weight
    assert log[1]["loss"] == pytest.approx((1 - lam) * log[1]["terms"]["pred"] + lam * log[1]["terms"]["sigreg"], rel=1e-4)
    assert [e["epoch"] for e in summary["eval"]] == [0, 2] and summary["first_loss"] == log[1]["loss"]
    a, b = tensors_of(tmp_path / "eval" / "checkpoint.safetensors"), tensors_of(tmp_path / "plain" / "checkpoint.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@needs_fashion_mnist
def test_a_nan_evaluation_stops_the_run_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    import sjalign.jepa.train as train

    images, eval_set = data
    real = train.evaluate_encoder
    calls = []

    def broken_at_epoch_2(encoder, eval_set, device):
        calls.append(1)
        out = real(encoder, eval_set, device)
        return {**out, "rankme": float("nan")} if len(calls) == 3 else out

    monkeypatch.setattr(train, "evaluate_encoder", broken_at_epoch_2)
    with pytest.raises(SjalignError, match=r"epoch 2: evaluation figure 'rankme' is not finite.*checkpoint of epoch 1"):
        pretrain(small_config(epochs=3), images, tmp_path, eval_set=eval_set)
    assert [r["epoch"] for r in read_log(tmp_path)] == [0, 1]
    from sjalign.jepa.checkpoint import checkpoint_epoch

    assert checkpoint_epoch(tmp_path) == 1


@needs_fashion_mnist
def test_a_nan_loss_term_stops_the_run_naming_the_term(data, tmp_path, monkeypatch):
    from sjalign.jepa.objectives import IJEPA

    images, _ = data
    forward = IJEPA.forward

    def nan_pred(self, images, masks):
        loss = forward(self, images, masks) * float("nan")
        self.last_terms = {"pred": loss.detach()}
        return loss

    monkeypatch.setattr(IJEPA, "forward", nan_pred)
    with pytest.raises(SjalignError, match=r"epoch 1: loss, loss term 'pred' is not finite.*no epoch was saved"):
        pretrain(small_config(epochs=1), images, tmp_path)
    assert not (tmp_path / "checkpoint.safetensors").exists()


def test_curves_data_and_figure():
    log = [{"epoch": 0, "step": 0, "flops": 0, "eval": {"probe_acc": 0.7, "knn_acc": 0.5, "rankme": 2.0,
                                                          "participation_ratio": 1.1, "n_train": 5, "n_test": 5}},
           {"epoch": 1, "loss": 3.0, "flops": 10, "terms": {"pred": 1.0, "sigreg": 50.0}},
           {"epoch": 2, "loss": 2.0, "flops": 20, "terms": {"pred": 0.5, "sigreg": 40.0},
            "eval": {"probe_acc": 0.8, "knn_acc": None, "rankme": 9.0, "participation_ratio": 3.0}}]
    data = curves_data(log)
    assert data["terms"]["sigreg"] == ([1, 2], [10, 20], [50.0, 40.0])
    assert data["eval"]["probe_acc"] == ([0, 2], [0, 20], [0.7, 0.8])
    assert data["eval"]["knn_acc"] == ([0], [0], [0.5])  # None (no labels) is not drawn
    assert "n_train" not in data["eval"]
    assert curves_data([{"epoch": 1, "loss": 1.0, "flops": 5}])["terms"] == {"loss": ([1], [5], [1.0])}
    fig = fig_curves(data, title="t")
    assert len(fig.axes) == 6


@needs_fashion_mnist
def test_cli_logs_prints_and_draws_the_evaluation(runner, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["pretrain", "--max-states", "120", "--epochs", "2", "--batch-size", "32", "--device", "cpu",
                              "--eval-states", "50", "--json", "-o", str(out)])
    assert res.exit_code == 0, res.output
    # 120 states hold 17 test states: --eval-states 50 is clamped with one warning
    assert res.stderr.count("warning:") == 1 and "--eval-states 50: the selection holds 17 held-out states" in res.stderr
    summary = json.loads(res.stdout)
    assert [e["epoch"] for e in summary["eval"]] == [0, 1, 2] and summary["eval"][0]["n_test"] == 17
    log = read_log(out)
    assert [r["epoch"] for r in log] == [0, 1, 2] and log[1]["terms"].keys() == {"pred"}
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    human = runner.invoke(app, ["pretrain", "--max-states", "120", "--epochs", "1", "--batch-size", "32", "--device", "cpu",
                                "-o", str(tmp_path / "human")])
    assert "epoch 0 (random init): probe" in human.stderr and "RankMe" in human.stderr
    off = runner.invoke(app, ["pretrain", "--max-states", "120", "--epochs", "1", "--batch-size", "32", "--device", "cpu",
                              "--eval-every", "0", "--json", "-o", str(tmp_path / "off")])
    assert off.exit_code == 0 and json.loads(off.stdout)["eval"] == []
    assert [r["epoch"] for r in read_log(tmp_path / "off")] == [1] and not (tmp_path / "off" / "curves.png").exists()


@needs_fashion_mnist
def test_cli_nan_stops_with_one_line(runner, tmp_path, monkeypatch):
    import sjalign.jepa.train as train

    monkeypatch.setattr(train, "evaluate_encoder", lambda *a: {"rankme": float("nan"), "probe_acc": None})
    out = tmp_path / "run"
    res = runner.invoke(app, ["pretrain", "--max-states", "40", "--epochs", "1", "--device", "cpu", "-o", str(out)])
    one_error_line(res, "epoch 0: evaluation figure 'rankme' is not finite", "no epoch was saved")
    assert not (out / "checkpoint.safetensors").exists()
