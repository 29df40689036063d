"""Training FLOPs: hand counts, torch's FlopCounterMode as the reference, and the trainer's log."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import flop_counter

from sjalign.jepa import PretrainConfig, ViTConfig, build_objective, pretrain, read_log
from sjalign.jepa.flops import CountFlops, StepFlops, signature
from sjalign.jepa.objectives import OBJECTIVES


pytestmark = pytest.mark.usefixtures("one_thread")

SMALL_VIT = ViTConfig(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2)



def small_config(**kw) -> PretrainConfig:
    base = dict(model="custom", vit=SMALL_VIT, epochs=2, batch_size=32, lr=1e-3, pred_dim=16, pred_depth=1,
                seed=0, device="cpu")
    return PretrainConfig.from_dict({**base, **kw})  # objective options may be given flat


class LinearObjective(nn.Module):
    """A contract-following objective whose FLOPs are known by hand: one Linear(784 -> 10)."""

    name = "test-linear"
    export_prefix = "encoder"

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(28 * 28, 10)

    @classmethod
    def from_config(cls, config) -> "LinearObjective":
        return cls()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def export_encoder(self) -> nn.Module:
        return self.encoder

    def sample_masks(self, batch_size: int, generator: torch.Generator):
        return ()

    def forward(self, images: torch.Tensor, masks) -> torch.Tensor:
        return self.encoder(images.flatten(1)).pow(2).mean()

    def after_step(self, step: int, total_steps: int) -> float:
        return 0.0


def test_trainer_logs_hand_counted_flops(monkeypatch, tmp_path):
    monkeypatch.setitem(OBJECTIVES, "test-linear", LinearObjective)
    images = torch.rand(100, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    summary = pretrain(small_config(objective="test-linear", epochs=3, batch_size=24), images, tmp_path)
    # 4 steps per epoch (4 images dropped); per step: forward x Wᵀ (2·B·784·10 FLOPs) and the
    # weight gradient (2·B·784·10); the input needs no gradient
    per_step = 2 * (2 * 24 * 784 * 10)
    assert [r["flops"] for r in read_log(tmp_path)] == [4 * per_step, 8 * per_step, 12 * per_step]
    assert summary["flops"] == 12 * per_step


def test_attention_is_counted_on_the_cpu():
    b, h, s, d = 2, 3, 10, 8
    q, k, v = (torch.randn(b, h, s, d, requires_grad=True) for _ in range(3))
    with CountFlops() as mode:
        F.scaled_dot_product_attention(q, k, v)
    assert mode.total == 2 * (2 * b * h * s * s * d)  # Q Kᵀ and (softmax) V
    with CountFlops() as mode:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    assert mode.total > 2 * (2 * b * h * s * s * d)  # the backward pass counts too


def cpu_sdpa_mapping() -> dict:
    """FlopCounterMode's custom mapping for the CPU attention kernel it has no formula for."""
    aten = torch.ops.aten
    return {
        aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *args, out_shape=None, **kw: flop_counter.sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *args, out_shape=None, **kw: flop_counter.sdpa_backward_flop_count(g, q, k, v),
    }


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_step_flops_equal_torch_flop_counter(objective):
    torch.manual_seed(0)
    model = build_objective(small_config(objective=objective))
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    masks = model.sample_masks(8, torch.Generator().manual_seed(2))
    counter = StepFlops()
    with counter.count(signature(x, masks)) as key:
        model(x, masks).backward()
    reference = flop_counter.FlopCounterMode(display=False, custom_mapping=cpu_sdpa_mapping())
    with reference:
        model(x, masks).backward()
    assert counter[key] == reference.get_total_flops() > 0


def test_counted_once_per_signature_and_linear_in_batch():
    torch.manual_seed(0)
    model = build_objective(small_config())
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    masks = model.sample_masks(16, torch.Generator().manual_seed(0))
    counted = []
    for b in (8, 16):
        counter = StepFlops()
        m = type(masks)(*(t[:b] for t in masks))
        with counter.count(signature(x[:b], m)) as key:
            model(x[:b], m).backward()
        with counter.count(key) as again:  # a known signature runs without counting
            assert again == key
        assert len(counter) == 1
        counted.append(counter[key])
    assert counted[0] > 0 and counted[1] == 2 * counted[0]
