"""Tests of sjalign.jepa: ViT, masks, I-JEPA loss/EMA, trainer, checkpoints (CPU, seeded)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sjalign.errors import SjalignError
from sjalign.jepa import (
    IJEPA,
    MaskConfig,
    Predictor,
    PretrainConfig,
    VisionTransformer,
    ViTConfig,
    build_objective,
    ijepa_loss,
    load_encoder,
    lr_at,
    pretrain,
    read_log,
    sample_masks,
    save_checkpoint,
)
from sjalign.jepa.objectives.ijepa import ema_momentum, ema_update

from conftest import fashion_mnist_images, pretrain_first_epoch_only, tensors_of


@pytest.fixture(scope="module")
def fmnist():
    """512 real Fashion-MNIST images (n, 1, 28, 28) in [0, 1]."""
    return fashion_mnist_images(512)

SMALL_VIT = ViTConfig(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2)


def small_config(**kw) -> PretrainConfig:
    base = dict(model="custom", vit=SMALL_VIT, epochs=2, batch_size=64, lr=1e-3, warmup_epochs=1,
                pred_dim=16, pred_depth=1, seed=0, device="cpu")
    return PretrainConfig.from_dict({**base, **kw})  # objective options may be given flat



# --- ViT ---------------------------------------------------------------------------

def test_vit_shapes_and_layers():
    torch.manual_seed(0)
    vit = VisionTransformer(SMALL_VIT).eval()
    x = torch.rand(3, 1, 28, 28)
    assert vit.num_features == 32
    assert vit.forward_features(x).shape == (3, 49, 32)
    keep = torch.tensor([[0, 5, 48]] * 3)
    assert vit(x, keep=keep).shape == (3, 3, 32)
    # the last hidden state plus the final norm is the default output
    assert torch.allclose(vit.norm(vit.forward_features(x, layer=2)), vit.forward_features(x), atol=1e-6)
    assert torch.equal(vit.forward_features(x, layer=-1), vit.forward_features(x, layer=2))
    assert vit.forward_features(x, layer=1).shape == (3, 49, 32)
    with pytest.raises(ValueError, match="layer"):
        vit.forward_features(x, layer=3)


def test_predictor_shape():
    pred = Predictor(embed_dim=32, pred_dim=16, depth=1, num_heads=2, grid_size=7)
    out = pred(torch.rand(2, 5, 32), torch.arange(5).repeat(2, 1), torch.tensor([[10, 11, 12]] * 2))
    assert out.shape == (2, 3, 32)


# --- masks -------------------------------------------------------------------------

@pytest.mark.parametrize("grid", [(7, 7), (14, 14)])
def test_masks_shapes_and_disjoint(grid):
    gen = torch.Generator().manual_seed(0)
    n = grid[0] * grid[1]
    for _ in range(20):
        m = sample_masks(16, grid, MaskConfig(), generator=gen)
        assert m.context.ndim == 2 and m.context.shape[0] == 16
        assert m.targets.ndim == 3 and m.targets.shape[:2] == (16, 4)
        assert m.context.dtype == m.targets.dtype == torch.int64
        assert int(m.context.min()) >= 0 and int(m.context.max()) < n
        assert m.context.shape[1] > MaskConfig().min_keep
        for b in range(16):
            ctx = m.context[b].tolist()
            assert ctx == sorted(set(ctx))  # sorted, unique
            assert not set(ctx) & set(m.targets[b].flatten().tolist())  # context ∩ targets = ∅
            for blk in m.targets[b]:
                assert len(set(blk.tolist())) == len(blk)


def test_masks_target_block_geometry():
    # each target block is a filled h x w rectangle covering ~15-20 % of a 14 x 14 grid
    gen = torch.Generator().manual_seed(1)
    m = sample_masks(4, (14, 14), generator=gen)
    for blk in m.targets.reshape(-1, m.targets.shape[-1]):
        rows, cols = blk // 14, blk % 14
        h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert h * w == len(blk)
        assert 0.1 <= len(blk) / 196 <= 0.25


def test_masks_seeded_and_fallback():
    a = sample_masks(8, (7, 7), generator=torch.Generator().manual_seed(3))
    b = sample_masks(8, (7, 7), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.context, b.context) and torch.equal(a.targets, b.targets)
    # huge targets and a small context: the fallback still leaves > min_keep context patches
    cfg = MaskConfig(target_scale=(0.5, 0.6), context_scale=(0.3, 0.4))
    m = sample_masks(8, (7, 7), cfg, generator=torch.Generator().manual_seed(0))
    assert m.context.shape[1] > cfg.min_keep


# --- loss and EMA ------------------------------------------------------------------

def test_ijepa_loss_value_and_stop_gradient():
    torch.manual_seed(0)
    pred = torch.randn(2, 3, 4, requires_grad=True)
    target = torch.randn(2, 3, 4, requires_grad=True)
    pred.data[0, 0, 0] = target.data[0, 0, 0] + 3.0  # one element on the linear branch
    loss = ijepa_loss(pred, target)
    e = (pred - target).detach().numpy().ravel()
    ref = np.mean([0.5 * x * x if abs(x) < 1 else abs(x) - 0.5 for x in e])  # smooth L1, β = 1, per element
    assert loss.item() == pytest.approx(ref, rel=1e-6)
    loss.backward()
    assert pred.grad is not None and target.grad is None


@pytest.mark.parametrize("shapes", [((2, 3, 4), (2, 3, 5)), ((2, 3), (2, 3)), ((2, 3, 4), (2, 4, 4))])
def test_ijepa_loss_shape_checks(shapes):
    with pytest.raises(ValueError, match="ijepa_loss"):
        ijepa_loss(torch.zeros(shapes[0]), torch.zeros(shapes[1]))


def test_ema_update_math():
    torch.manual_seed(0)
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    ema_update(target, online, 0.9)
    for t, t0, o in zip(target.parameters(), before, online.parameters()):
        assert torch.allclose(t, 0.9 * t0 + 0.1 * o)
    assert ema_momentum(0, 100, (0.996, 1.0)) == pytest.approx(0.996)
    assert ema_momentum(50, 100, (0.996, 1.0)) == pytest.approx(0.998)
    assert ema_momentum(100, 100, (0.996, 1.0)) == pytest.approx(1.0)


def test_ijepa_module_target_has_no_grad():
    torch.manual_seed(0)
    model = build_objective(small_config())
    assert isinstance(model, IJEPA)
    x = torch.rand(4, 1, 28, 28)
    loss = model(x, model.sample_masks(4, torch.Generator().manual_seed(0)))
    loss.backward()
    assert all(p.grad is None for p in model.target_encoder.parameters())
    assert model.encoder.patch_embed.weight.grad is not None
    assert model.predictor.mask_token.grad is not None


def test_lr_schedule():
    assert lr_at(0, 100, 10, 1.0, 0.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)


# --- training ----------------------------------------------------------------------

def test_training_lowers_loss_on_fashion_mnist(fmnist, tmp_path):
    # the optimiser's mechanics on raw pixels (the positional shortcut makes this loss fall fast; whether an
    # objective's recipe learns is judged by the probe and RankMe in test_objectives.py)
    cfg = PretrainConfig(dataset="fashion-mnist", view="identity", epochs=3, batch_size=64, warmup_epochs=1,
                         seed=0, device="cpu", input_norm=False)  # the vit_tiny preset
    steps = []
    summary = pretrain(cfg, fmnist, tmp_path / "run", on_step=lambda *a: steps.append(a))
    log = read_log(tmp_path / "run")
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert log[-1]["loss"] < 0.8 * log[0]["loss"]
    assert summary["steps"] == 24 and steps[-1][:2] == (24, 24)  # 8 steps per epoch: each epoch's last step
    assert [s[0] for s in steps] == [8, 16, 24] and all(math.isfinite(s[2]) for s in steps)
    assert set(log[0]) >= {"epoch", "loss", "img_per_s", "seconds", "lr", "flops"}
    assert 0 < log[0]["flops"] < log[1]["flops"] < log[2]["flops"] == summary["flops"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["vit"]["embed_dim"] == 128


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = small_config()
    model = build_objective(cfg)
    with torch.no_grad():  # make the target encoder differ from the context encoder
        for p in model.target_encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_checkpoint(tmp_path, model, cfg, epoch=3)
    x = torch.rand(5, 1, 28, 28)
    expected = model.target_encoder.eval()(x)
    for path in (tmp_path, tmp_path / "checkpoint.safetensors"):
        encoder, loaded_cfg = load_encoder(path)
        assert loaded_cfg == cfg
        assert not encoder.training
        assert torch.equal(encoder(x), expected)
    with safe_open(str(tmp_path / "checkpoint.safetensors"), framework="pt") as fh:
        meta = fh.metadata()
        prefixes = {k.split(".")[0] for k in fh.keys()}
    assert meta["sjalign.format"] == "checkpoint/1" and meta["epoch"] == "3"
    assert PretrainConfig.from_json(meta["config"]) == cfg
    assert prefixes == {"encoder", "target_encoder", "predictor"}


def test_resume_matches_uninterrupted_run(fmnist, tmp_path):
    images, cfg = fmnist[:256], small_config(epochs=2)
    full = pretrain(cfg, images, tmp_path / "full")
    pretrain_first_epoch_only(cfg, images, tmp_path / "part")
    assert [r["epoch"] for r in read_log(tmp_path / "part")] == [1]
    resumed = pretrain(cfg, images, tmp_path / "part", resume=True)
    assert resumed["resumed_from"] == 1 and resumed["steps"] == full["steps"]
    a, b = tensors_of(tmp_path / "full" / "checkpoint.safetensors"), tensors_of(tmp_path / "part" / "checkpoint.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    sa, sb = tensors_of(tmp_path / "full" / "train_state.safetensors"), tensors_of(tmp_path / "part" / "train_state.safetensors")
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert [r["epoch"] for r in read_log(tmp_path / "part")] == [1, 2]


def test_resume_refuses_other_architecture(fmnist, tmp_path):
    images = fmnist[:128]
    pretrain(small_config(epochs=1), images, tmp_path)
    with pytest.raises(SjalignError, match="cannot resume.*pred_dim"):
        pretrain(small_config(epochs=2, pred_dim=32), images, tmp_path, resume=True)
    with pytest.raises(SjalignError, match="already exists"):
        pretrain(small_config(epochs=1), images, tmp_path)
    with pytest.raises(SjalignError, match="no such file"):
        pretrain(small_config(), images, tmp_path / "nothing", resume=True)
    pretrain(small_config(epochs=1, seed=1), images, tmp_path, overwrite=True)
    assert [r["epoch"] for r in read_log(tmp_path)] == [1]
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 1


def test_input_norm_measures_the_training_pixels_and_travels_with_the_checkpoint(fmnist, tmp_path, monkeypatch):
    """input_norm: the run's config holds the training images' pixel mean and std, the exported encoder
    standardises with them (equal to a plain ViT on standardised pixels), a resume measures the same
    values, and a config written before the option existed reads as raw pixels."""
    images = fmnist[:128]
    pretrain(small_config(epochs=1, input_norm=True), images, tmp_path / "norm")
    encoder, cfg = load_encoder(tmp_path / "norm")
    pixels = images.double()
    assert cfg.input_norm and cfg.vit.input_mean == pytest.approx((float(pixels.mean()),), rel=1e-9)
    assert cfg.vit.input_std == pytest.approx((float(pixels.std(unbiased=False)),), rel=1e-9)
    plain = VisionTransformer(SMALL_VIT).eval()
    plain.load_state_dict(encoder.state_dict())
    x = images[:4]
    standardised = (x - cfg.vit.input_mean[0]) / cfg.vit.input_std[0]
    torch.testing.assert_close(encoder(x), plain(standardised), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(encoder(x), plain(x), atol=1e-3)  # the statistics matter
    import sjalign.jepa.train as train

    monkeypatch.setattr(train, "INPUT_STATS_IMAGES", 7)  # a re-measurement would differ: the resume keeps the run's own
    pretrain(small_config(epochs=2, input_norm=True), images, tmp_path / "norm", resume=True)
    assert load_encoder(tmp_path / "norm")[1].vit.input_mean == cfg.vit.input_mean
    raw = small_config(epochs=1, input_norm=False)
    assert raw.vit.input_mean is None
    old = json.loads(raw.to_json())
    del old["input_norm"]  # a config.json of an earlier version (input normalisation is now the default)
    assert PretrainConfig.from_dict(old).input_norm is False
    with pytest.raises(ValueError, match="one value per channel"):
        ViTConfig(in_chans=1, input_mean=(0.5, 0.5), input_std=(1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        ViTConfig(in_chans=1, input_mean=(0.5,), input_std=(0.0,))


# --- errors ------------------------------------------------------------------------

def test_wrong_format_tag_raises(tmp_path):
    path = tmp_path / "latents.safetensors"
    save_file({"latents": torch.zeros(2, 3)}, str(path), metadata={"sjalign.format": "latents/1"})
    with pytest.raises(SjalignError, match="latents.safetensors.*checkpoint/1"):
        load_encoder(path)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(SjalignError, match="garbage.safetensors"):
        load_encoder(garbage)
    with pytest.raises(SjalignError, match="no such file"):
        load_encoder(tmp_path / "missing")


def test_bad_inputs_raise(tmp_path):
    with pytest.raises(SjalignError, match="no images"):
        pretrain(small_config(), torch.zeros(0, 1, 28, 28), tmp_path / "a")
    with pytest.raises(SjalignError, match="unknown objective 'nope'"):
        pretrain(small_config(objective="nope"), torch.rand(8, 1, 28, 28), tmp_path / "b")
    with pytest.raises(SjalignError, match="do not fit"):
        pretrain(small_config(), torch.rand(8, 3, 32, 32), tmp_path / "c")
    with pytest.raises(SjalignError, match="unknown model preset"):
        PretrainConfig(model="vit_huge")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pretrain_cuda_bf16(tmp_path):
    images = torch.rand(256, 1, 28, 28)
    summary = pretrain(small_config(epochs=1, device="cuda", precision="bf16"), images, tmp_path)
    assert summary["device"].startswith("cuda")
    encoder, _ = load_encoder(tmp_path, device="cuda")
    assert encoder.forward_features(images[:4].cuda()).shape == (4, 49, 32)
