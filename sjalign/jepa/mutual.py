"""Mutual teaching (Social-JEPA §3.7, Algorithm 2, Table 9): two world models trained at once on paired views.

Model A sees view a, model B view b of the same training states; every step takes the same
rows in both (A's generator draws the shared order; each model draws its own masks and
augmentations). Each trains its own objective plus a cross-model term on the pooled encoder
latents of the step's clean batch, normalised per batch (:func:`~sjalign.jepa.teacher.normalise_batch`),
with the alignment maps refitted by ridge every N steps on a FIFO buffer of recent detached
latent pairs and held fixed between fits (no gradient flows into a map):

- **Method B, cross-model loss** (strong coupling): one map W (a → b) and the paper's term
  γ · mean((Ẑ_a Wᵀ − Ẑ_b)²) added to both objectives, so its gradient reaches both encoders.
  It is computed as two halves with the partner's latents detached
  (γ‖Ẑ_a Wᵀ − sg(Ẑ_b)‖² for A, γ‖sg(Ẑ_a) Wᵀ − Ẑ_b‖² for B): each model's parameters get
  exactly the joint term's gradient, and each model's backward is counted on its own.
- **Method A, alternating alignment** (weak coupling): two maps, W_ba (b → a) and W_ab (a → b);
  each model is pulled toward the other's latents mapped into its own space, which are
  detached: γ‖Ẑ_a − sg(Ẑ_b W_baᵀ)‖² for A and γ‖Ẑ_b − sg(Ẑ_a W_abᵀ)‖² for B. Estimating the maps
  and updating the models alternate (refit, N steps, refit, ...).

The first fit, before step 1, uses a no-grad forward of both encoders on a seeded sample of
training states. Both checkpoints are ordinary run folders (``embed --encoder jepa:DIR/a``);
the pair's folder gets ``pair.json`` (method, γ, N, both runs' summaries and the coupling's
cost). Map fits and that first sample's forwards are counted as the coupling's overhead
(``map_flops``), apart from each model's training FLOPs (which include the extra encoder
forward on the clean batch that the term needs).

Differences from the paper's Algorithm 2: the maps are refitted every N optimizer steps (not
every E epochs) from the last ``buffer`` pairs; latents are normalised per batch (one scale
per batch) rather than with running statistics; one process only (under ``torchrun`` both
models would have to exchange latents every step, which is not built).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sjalign.errors import SjalignError
from sjalign.jepa import distributed as ddp
from sjalign.jepa.config import PretrainConfig
from sjalign.jepa.flops import signature
from sjalign.jepa.monitor import EvalSet, embed_images
from sjalign.jepa.teacher import DEFAULT_BUFFER, normalise_batch, ridge_fit_flops, ridge_map
from sjalign.jepa.train import (
    EpochCallback, Images, StartCallback, _Feed, _Trainee, _undo_fresh_start, with_input_stats,
)

METHODS = ("a", "b")
PAIR_FILE = "pair.json"
PAIR_FORMAT = "sjalign.pair.v1"


@dataclass(frozen=True)
class MutualOptions:
    """The cross-model term's settings.

    Attributes:
        method: "a" (alternating alignment: two maps, detached mapped targets) or "b" (cross-model
            loss γ‖W z_a − z_b‖², gradient to both models).
        weight: γ ≥ 0, finite (mean squared error in normalised latent units).
        every: refit the map(s) every N ≥ 1 optimizer steps.
        buffer: latent pairs the refits use (the most recent), ≥ 2.
        lam: ridge λ of the refits (per sample, SPEC §3).
    """

    method: str = "b"
    weight: float = 1.0
    every: int = 50
    buffer: int = DEFAULT_BUFFER
    lam: float = 1e-3

    def problems(self) -> list[str]:
        """What is wrong with these settings (empty when fine), one phrase per option."""
        out = []
        if self.method not in METHODS:
            out.append(f"--mutual-method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not isinstance(self.weight, (int, float)) or not 0 <= self.weight < float("inf"):
            out.append(f"--align-weight must be a finite number >= 0, got {self.weight}")
        if not isinstance(self.every, int) or self.every < 1:
            out.append(f"--align-every must be >= 1 optimizer step, got {self.every}")
        if self.buffer < 2:
            out.append(f"buffer must be >= 2, got {self.buffer}")
        return out


class CrossModelCoupling:
    """The maps between two models' normalised latents, their refits, and the cross-model terms.

    Args:
        d_a, d_b: the two models' latent widths.
        options: :class:`MutualOptions`.
    """

    def __init__(self, d_a: int, d_b: int, options: MutualOptions) -> None:
        problems = options.problems()
        if problems:
            raise SjalignError("pretrain: " + "; ".join(problems))
        self.options = options
        self.W_ab = torch.zeros(d_b, d_a)  # a -> b: ẑ_b ≈ ẑ_a W_abᵀ
        self.W_ba = torch.zeros(d_a, d_b)  # b -> a (method a only)
        self.fits = 0
        self.map_flops = 0.0
        self._buf_a: list[np.ndarray] = []
        self._buf_b: list[np.ndarray] = []

    def costs(self) -> dict[str, float | int]:
        """``{"map_flops", "align_fits"}`` so far: what the coupling costs beside the two models' training."""
        return {"map_flops": self.map_flops, "align_fits": self.fits}

    def first_fit(self, z_a: np.ndarray, z_b: np.ndarray, forward_flops: float = 0.0) -> None:
        """The fit before step 1 from no-grad latents of the same m states: z_a (m, d_a), z_b (m, d_b)."""
        self.map_flops += forward_flops
        self._buf_a = [normalise_batch(torch.from_numpy(z_a)).numpy()]
        self._buf_b = [normalise_batch(torch.from_numpy(z_b)).numpy()]
        self.refit()

    def refit(self) -> None:
        """Ridge map(s) from the buffer's latent pairs; counts their FLOPs."""
        cap = self.options.buffer
        x_a, x_b = np.concatenate(self._buf_a)[-cap:], np.concatenate(self._buf_b)[-cap:]
        self.W_ab = torch.from_numpy(ridge_map(x_a, x_b, self.options.lam).astype(np.float32))
        self.map_flops += ridge_fit_flops(len(x_a), x_a.shape[1], x_b.shape[1])
        if self.options.method == "a":
            self.W_ba = torch.from_numpy(ridge_map(x_b, x_a, self.options.lam).astype(np.float32))
            self.map_flops += ridge_fit_flops(len(x_a), x_b.shape[1], x_a.shape[1])
        self.fits += 1
        self._buf_a, self._buf_b = [x_a], [x_b]

    def __call__(self, z_a: torch.Tensor, z_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cross-model terms of one step.

        Args:
            z_a: (b, d_a) model A's pooled latents of the batch (with gradient).
            z_b: (b, d_b) model B's pooled latents of the same states (with gradient).

        Returns:
            (term_a, term_b): () scalars; term_a's gradient reaches only A, term_b's only B.
            Method b: both equal γ·mean((Ẑ_a Wᵀ − Ẑ_b)²) in value. The batch's detached
            normalised latents join the buffer.
        """
        n_a, n_b = normalise_batch(z_a.float()), normalise_batch(z_b.float())
        self._buf_a.append(n_a.detach().cpu().numpy())
        self._buf_b.append(n_b.detach().cpu().numpy())
        gamma = self.options.weight
        w_ab = self.W_ab.to(n_a.device)
        if self.options.method == "b":
            term_a = gamma * ((n_a @ w_ab.T - n_b.detach()) ** 2).mean()
            term_b = gamma * ((n_a.detach() @ w_ab.T - n_b) ** 2).mean()
        else:
            term_a = gamma * ((n_a - n_b.detach() @ self.W_ba.to(n_a.device).T) ** 2).mean()
            term_b = gamma * ((n_b - n_a.detach() @ w_ab.T) ** 2).mean()
        return term_a, term_b

    def after_step(self, step: int) -> None:
        """Refit after every ``every``-th optimizer step (``step`` counts from 1)."""
        if step % self.options.every == 0:
            self.refit()


def _first_fit(coupling: CrossModelCoupling, a: _Trainee, b: _Trainee, seed: int) -> None:
    """Both encoders embed a seeded sample of min(n, buffer) training states under ``no_grad``."""
    from torch.utils.flop_counter import FlopCounterMode

    rows = np.sort(np.random.default_rng(seed).choice(a.n, size=min(a.n, coupling.options.buffer), replace=False))
    with FlopCounterMode(display=False) as counter:
        z_a = embed_images(a.model.encoder, a.feed.take(rows), a.device)
        z_b = embed_images(b.model.encoder, b.feed.take(rows), b.device)
    coupling.first_fit(z_a, z_b, float(counter.get_total_flops()))


def pretrain_pair(config_a: PretrainConfig, config_b: PretrainConfig, images_a: Images, images_b: Images,
                  out_dir: str | Path, options: MutualOptions, *, overwrite: bool = False,
                  eval_sets: tuple[EvalSet | None, EvalSet | None] = (None, None), eval_every: int = 1,
                  on_start: StartCallback | None = None,
                  on_epoch: EpochCallback | None = None) -> dict[str, Any]:
    """Train two models at once with a cross-model term (mutual teaching); ``out_dir/a`` and ``out_dir/b``.

    Args:
        config_a, config_b: each model's config (its view, seed, objective, ...); they must agree on
            ``epochs`` and ``batch_size`` (the two step in lockstep).
        images_a, images_b: (n, C, H, W) float32 observations in [0, 1] (or map-style Datasets),
            row i of both the same state.
        out_dir: the pair's folder; ``a/`` and ``b/`` are ordinary run folders, ``pair.json`` the
            pair's summary.
        options: the coupling (:class:`MutualOptions`).
        overwrite: start afresh over an earlier pair in ``out_dir``.
        eval_sets: each model's held-out labelled states (its own view), or None.
        eval_every: evaluate every this many epochs (and epoch 0, and the last).
        on_start: called once with ``{"a": run_info, "b": run_info}`` before the first step.
        on_epoch: called with each model's epoch record, which carries ``"model": "a"`` or ``"b"``.

    Returns:
        ``{"format", "method", "weight", "every", "a": summary, "b": summary, "flops", "map_flops",
        "align_fits", "seconds"}`` (summaries as :func:`sjalign.jepa.pretrain` returns them; ``flops``
        is both models' training FLOPs).

    Raises:
        SjalignError: bad options, configs that do not step together, images of different counts,
            a run already in ``out_dir`` without ``overwrite``, under torchrun, or anything
            :func:`sjalign.jepa.pretrain` refuses.
    """
    out_dir = Path(out_dir)
    problems = options.problems()
    if config_a.epochs != config_b.epochs or config_a.batch_size != config_b.batch_size:
        problems.append(f"both models need the same epochs and batch size (a: {config_a.epochs}, "
                        f"{config_a.batch_size}; b: {config_b.epochs}, {config_b.batch_size})")
    if problems:
        raise SjalignError("pretrain: " + "; ".join(problems))
    if eval_every < 1:
        raise SjalignError(f"pretrain: eval_every must be >= 1, got {eval_every}")
    vit_a, vit_b = config_a.vit, config_b.vit
    feed_a = _Feed(images_a, (vit_a.in_chans, vit_a.img_size, vit_a.img_size), config_a.model)
    feed_b = _Feed(images_b, (vit_b.in_chans, vit_b.img_size, vit_b.img_size), config_b.model)
    config_a, config_b = with_input_stats(config_a, feed_a), with_input_stats(config_b, feed_b)
    if feed_a.n != feed_b.n:
        raise SjalignError(f"pretrain: the two views hold {feed_a.n} and {feed_b.n} training states; mutual teaching "
                           "needs the same states in both (row i of each the same state)")
    from sjalign.jepa.checkpoint import CHECKPOINT_FILE

    if not overwrite and any((out_dir / p).exists() for p in (PAIR_FILE, f"a/{CHECKPOINT_FILE}", f"b/{CHECKPOINT_FILE}")):
        raise SjalignError(f"{out_dir}: already holds a pair (overwrite it to start afresh)")
    from sjalign.device import resolve_device

    info, device = ddp.setup(resolve_device(config_a.device))
    if info.enabled:
        ddp.teardown(info)
        raise SjalignError("pretrain: --mutual runs in one process (not under torchrun)")
    created = {name: not (out_dir / name).exists() for name in ("", "a", "b")}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_pair_file(out_dir, {"format": PAIR_FORMAT, "method": options.method, "weight": options.weight,
                                   "every": options.every, "finished": False})
        return _train_pair(config_a, config_b, feed_a, feed_b, out_dir, options, info, device, eval_sets,
                           eval_every, on_start, on_epoch)
    except BaseException:
        for name in ("a", "b"):
            _undo_fresh_start(out_dir / name, created[name])
        if not any((out_dir / name / CHECKPOINT_FILE).exists() for name in ("a", "b")):
            (out_dir / PAIR_FILE).unlink(missing_ok=True)  # nothing of the pair was saved
            if created[""]:
                with contextlib.suppress(OSError):
                    out_dir.rmdir()  # only if empty
        raise


def _train_pair(config_a: PretrainConfig, config_b: PretrainConfig, feed_a: _Feed, feed_b: _Feed, out_dir: Path,
                options: MutualOptions, info: ddp.DistInfo, device: torch.device,
                eval_sets: tuple[EvalSet | None, EvalSet | None], eval_every: int,
                on_start: StartCallback | None, on_epoch: EpochCallback | None) -> dict[str, Any]:
    def tagged(name: str) -> EpochCallback | None:
        return None if on_epoch is None else (lambda record: on_epoch({**record, "model": name}))

    a = _Trainee(config_a, feed_a, out_dir / "a", None, info, device, eval_sets[0], eval_every)
    b = _Trainee(config_b, feed_b, out_dir / "b", None, info, device, eval_sets[1], eval_every)
    coupling = CrossModelCoupling(config_a.vit.embed_dim, config_b.vit.embed_dim, options)
    t_run, seen = time.perf_counter(), 0
    if on_start is not None:
        on_start({"a": a.run_info(), "b": b.run_info()})
    _first_fit(coupling, a, b, config_a.seed)
    a.evaluate_init(tagged("a"))
    b.evaluate_init(tagged("b"))
    for epoch in range(config_a.epochs):
        batches = a.begin_epoch()  # the shared order
        b.begin_epoch()
        for i, (x_a, x_b) in enumerate(zip(feed_a.epoch(batches), feed_b.epoch(batches))):
            masks_a, masks_b = a.begin_step(), b.begin_step()
            with a.counter.count(signature(x_a, masks_a) + ("forward",)) as fwd_a:
                loss_a = a.loss(x_a, masks_a, batches[i])
                z_a = a.pooled(x_a)
            with b.counter.count(signature(x_b, masks_b) + ("forward",)) as fwd_b:
                loss_b = b.loss(x_b, masks_b, batches[i])
                z_b = b.pooled(x_b)
            term_a, term_b = coupling(z_a, z_b)
            for run, loss, term, fwd, x, masks in ((a, loss_a, term_a, fwd_a, x_a, masks_a),
                                                   (b, loss_b, term_b, fwd_b, x_b, masks_b)):
                total = loss + term
                with run.counter.count(signature(x, masks) + ("backward",)) as bwd:
                    run.backward(total)
                run.flops += run.counter[fwd] + run.counter[bwd]
                run.update(total, {"cross": term.detach()})
            coupling.after_step(a.step)
        seen += a.steps_per_epoch * a.batch_size
        a.end_epoch(epoch, tagged("a"), coupling.costs())
        b.end_epoch(epoch, tagged("b"), coupling.costs())
    a.finish()
    b.finish()
    seconds = time.perf_counter() - t_run
    summary = {"format": PAIR_FORMAT, "finished": True, "method": options.method, "weight": options.weight, "every": options.every,
               "a": a.summary(seconds, seen, coupling.costs()), "b": b.summary(seconds, seen, coupling.costs()),
               "flops": a.flops + b.flops, **coupling.costs(), "seconds": round(seconds, 3)}
    _write_pair_file(out_dir, summary)
    return summary


def _write_pair_file(out_dir: Path, summary: dict[str, Any]) -> None:
    """``pair.json``, atomically: written first (``finished`` false, marking the folder as a pair's) and
    again after the last epoch with the summary."""
    from sjalign.outputs import atomic_write_bytes

    atomic_write_bytes(out_dir / PAIR_FILE, (json.dumps(summary, indent=1, sort_keys=True) + "\n").encode())


def is_pair_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a pair written by :func:`pretrain_pair` (a readable ``pair.json`` of its format)."""
    try:
        return json.loads((Path(path) / PAIR_FILE).read_text()).get("format") == PAIR_FORMAT
    except (OSError, ValueError, AttributeError):
        return False
