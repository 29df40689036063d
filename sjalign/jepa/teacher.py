"""Teacher–student migration (Social-JEPA §3.7, Algorithm 2) and its knowledge-distillation baseline.

A student trains its own objective plus an alignment term that pulls its latents towards a
frozen teacher's latents of the same states (seen through the teacher's own view)::

    align (migration):  L += μ · mean_{batch, j} ((Ẑ_s Wᵀ − Ẑ_t)_j)²      W refitted by ridge every N steps
    kd (baseline):      L += μ · mean_{batch, j} ((Ẑ_s Hᵀ + h − Ẑ_t)_j)²  H, h learned jointly, no refits

Ẑ_t (b, d_t) are the teacher's latents standardised per dimension with their mean and std over
all training states (the teacher is fixed; as fit-map standardises, SPEC §3). One scale for all
dimensions instead changed nothing for ``align`` and cost ``kd`` 1.7 probe points (docs/results.md).
Ẑ_s (b, d_s) are the student's mean-pooled encoder
tokens of the batch (with gradient), centred on the batch mean and divided by the batch's RMS
deviation over all dimensions (:func:`normalise_batch`, a BatchNorm without affine and with one
scale). Statistics stored at a refit would not do: a student early in training is nearly
collapsed, its mean drifts by far more than its spread between refits, and the stored centre
turned that drift into an alignment loss of 140–260 against LeJEPA's 0.25 (measured, two
epochs on 515 states); per-dimension scaling by tiny stds made it worse. For ``align``, W comes
from the last refit, a ridge solve (:func:`ridge_map`, λ per sample as in SPEC §3) on a FIFO
buffer of the most recent detached normalised student latents and their teacher latents; W is
held fixed between refits and no gradient flows into it. The first fit, before step 1, uses a
no-grad student forward of a seeded sample of training states.

The teacher is frozen and sees no augmentation, so its latents are computed once before training
(:class:`TeacherLatents`); that is the same as running it under ``no_grad`` at every step, and its
forward FLOPs are counted once. Map fits (solves and the first sample's forward) are counted
separately as the migration overhead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from sjalign.errors import SjalignError

MODES = ("align", "kd")
DEFAULT_BUFFER = 2048


@dataclass
class TeacherLatents:
    """A frozen teacher's latents of the training states, row i for the student's training row i.

    Attributes:
        z: (n, d_t) float32.
        present: (n,) bool: rows whose state the teacher's view holds (the term skips the others).
        spec: the teacher's encoder spec (``jepa:RUN``, ``timm:...``, ``hf:...``, a plugin's).
        flops: FLOPs of the teacher forwards that made ``z`` (0 when not measured).
    """

    z: np.ndarray
    present: np.ndarray
    spec: str
    flops: float = 0.0

    @property
    def dim(self) -> int:
        return int(self.z.shape[1])


def check_teacher_options(teacher: dict[str, Any]) -> list[str]:
    """Problems with a config's ``teacher`` entry (empty when fine): spec, view, weight μ ≥ 0 finite,
    every ≥ 1, mode in :data:`MODES`, dim ≥ 1, buffer ≥ 2."""
    problems = []
    if not isinstance(teacher.get("spec"), str) or not teacher.get("spec"):
        problems.append("teacher.spec must be an encoder spec")
    weight = teacher.get("weight")
    if not isinstance(weight, (int, float)) or not (0 <= weight < math.inf):
        problems.append(f"--align-weight must be a finite number >= 0, got {weight}")
    every = teacher.get("every")
    if not isinstance(every, int) or every < 1:
        problems.append(f"--align-every must be a whole number of steps >= 1, got {every}")
    if teacher.get("mode") not in MODES:
        problems.append(f"--teacher-mode must be one of {', '.join(MODES)}, got {teacher.get('mode')!r}")
    if not isinstance(teacher.get("dim"), int) or teacher["dim"] < 1:
        problems.append("teacher.dim must be the teacher's latent width")
    if not isinstance(teacher.get("buffer", DEFAULT_BUFFER), int) or teacher.get("buffer", DEFAULT_BUFFER) < 2:
        problems.append("teacher.buffer must be >= 2")
    return problems


def normalise_batch(z: torch.Tensor) -> torch.Tensor:
    """(b, d) -> (b, d): centred on the batch mean, divided by the RMS deviation over all entries (> 0)."""
    centred = z - z.mean(0, keepdim=True)
    return centred / centred.pow(2).mean().sqrt().clamp_min(1e-12)


def ridge_map(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """W (d_t, d_s) minimising mean ‖x Wᵀ − y‖² + λ‖W‖²_F over n paired rows, in float64.

    Wᵀ = (xᵀx/n + λ I)⁻¹ xᵀy/n: SPEC §3's ridge with λ per sample (scikit-learn's
    ``Ridge(alpha=λ·n, fit_intercept=False)``); x and y are expected centred.

    Args:
        x: (n, d_s) student latents, centred and scaled.
        y: (n, d_t) teacher latents, standardised.
        lam: λ > 0.
    """
    import scipy.linalg

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    c_xx = x.T @ x / n + lam * np.eye(x.shape[1])
    return scipy.linalg.solve(c_xx, x.T @ y / n, assume_a="pos").T


def ridge_fit_flops(n: int, d_s: int, d_t: int) -> float:
    """FLOPs of one ridge fit on n pairs: C_aa (2n·d_s²), C_ab (2n·d_s·d_t), the solve (d_s³/3 + 2·d_s²·d_t)."""
    return 2.0 * n * d_s * d_s + 2.0 * n * d_s * d_t + d_s ** 3 / 3.0 + 2.0 * d_s * d_s * d_t


class LatentAlignment(nn.Module):
    """The alignment term and its state; a submodule of the objective, so it is saved and resumed with it.

    Buffers (in the state dict): ``W`` (d_t, d_s), ``t_mean``, ``t_std`` (d_t,), ``fitted``
    (whether a first fit happened), ``n_fits`` and ``overhead_flops`` (cumulative counts).
    ``kd`` adds the learned head ``head`` (d_s -> d_t), trained by the student's optimizer.

    Args:
        d_student: the student's latent width d_s.
        teacher: the teacher's settings (``spec``, ``view``, ``weight`` μ, ``every`` N, ``mode``,
            ``dim`` d_t, ``buffer``), as in the run's config.
        lam: ridge λ of the refits (standardised units, per sample).
    """

    def __init__(self, d_student: int, teacher: dict[str, Any], *, lam: float = 1e-3) -> None:
        super().__init__()
        problems = check_teacher_options(teacher)
        if problems:
            raise SjalignError("pretrain: " + "; ".join(problems))
        d_t = int(teacher["dim"])
        self.mode, self.weight, self.every = teacher["mode"], float(teacher["weight"]), int(teacher["every"])
        self.lam = lam
        self.capacity = int(teacher.get("buffer", DEFAULT_BUFFER))
        self.register_buffer("W", torch.zeros(d_t, d_student))
        self.register_buffer("t_mean", torch.zeros(d_t))
        self.register_buffer("t_std", torch.ones(d_t))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("n_fits", torch.zeros((), dtype=torch.int64))  # cumulative, resumed with the run
        self.register_buffer("overhead_flops", torch.zeros((), dtype=torch.float64))
        self.head = nn.Linear(d_student, d_t) if self.mode == "kd" else None
        self.teacher: TeacherLatents | None = None
        self._buf_s: list[np.ndarray] = []
        self._buf_rows: list[np.ndarray] = []

    @property
    def fits(self) -> int:
        """Ridge fits of W so far (the first one included), over the whole run."""
        return int(self.n_fits)

    @property
    def map_flops(self) -> float:
        """Migration overhead so far: the first sample's student forward and every ridge fit."""
        return float(self.overhead_flops)

    def add_flops(self, flops: float) -> None:
        self.overhead_flops += flops

    def costs(self) -> dict[str, float | int]:
        """``{"teacher_flops", "map_flops", "align_fits"}`` so far: what migration costs beside training."""
        return {"teacher_flops": self.teacher.flops, "map_flops": self.map_flops, "align_fits": self.fits}

    def attach(self, teacher: TeacherLatents) -> None:
        """Give the term its teacher's latents (not saved: they are recomputed from the spec on resume)."""
        if teacher.dim != self.W.shape[0]:
            raise SjalignError(f"teacher {teacher.spec}: latents of width {teacher.dim}, the run expects "
                               f"{self.W.shape[0]}")
        self.teacher = teacher

    def _teacher_rows(self, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.teacher.z[rows])

    def first_fit(self, student_z: np.ndarray, rows: np.ndarray) -> None:
        """The fit before step 1 from a no-grad student forward of training rows ``rows`` (m,), student_z (m, d_s)."""
        keep = self.teacher.present[rows]
        student_z, rows = student_z[keep], rows[keep]
        if len(rows) < 2:
            raise SjalignError(f"teacher {self.teacher.spec}: fewer than 2 training states have a teacher latent")
        t = self.teacher.z[self.teacher.present]
        t_std = t.std(0)
        self.t_mean.copy_(torch.from_numpy(t.mean(0)))
        self.t_std.copy_(torch.from_numpy(np.where(t_std > 0, t_std, 1.0).astype(np.float32)))
        self.fitted.fill_(True)
        if self.mode == "align":
            self._buf_s = [normalise_batch(torch.from_numpy(student_z)).numpy()]
            self._buf_rows = [rows]
            self.refit()

    def refit(self) -> None:
        """Ridge W from the buffer of normalised student latents and their teacher latents; counts its FLOPs."""
        x = np.concatenate(self._buf_s)[-self.capacity:]
        rows = np.concatenate(self._buf_rows)[-self.capacity:]
        y = (self.teacher.z[rows] - self.t_mean.cpu().numpy()) / self.t_std.cpu().numpy()
        self.W.copy_(torch.from_numpy(ridge_map(x, y, self.lam).astype(np.float32)))
        self.n_fits += 1
        self.add_flops(ridge_fit_flops(len(rows), x.shape[1], y.shape[1]))
        self._buf_s, self._buf_rows = [x], [rows]

    def forward(self, student_z: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        """μ-weighted alignment loss of one batch.

        Args:
            student_z: (b, d_s) the student's pooled latents of the batch (with gradient).
            rows: (b,) their training-row indices (into the teacher's latents).

        Returns:
            () scalar: μ · mean squared error in standardised teacher units (0 when no row has a
            teacher latent). In migration mode the batch's detached latents join the buffer.
        """
        keep = self.teacher.present[rows]
        if keep.sum() < 2:  # a batch statistic needs two rows
            return student_z.sum() * 0.0
        zs = normalise_batch(student_z[torch.from_numpy(keep).to(student_z.device)].float())  # (b', d_s)
        if self.mode == "align":
            self._buf_s.append(zs.detach().cpu().numpy())
            self._buf_rows.append(rows[keep])
        target = (self._teacher_rows(rows[keep]).to(zs.device) - self.t_mean) / self.t_std  # (b', d_t)
        pred = self.head(zs) if self.head is not None else zs @ self.W.T  # W fixed: a buffer, no gradient
        return self.weight * ((pred - target) ** 2).mean()

    def after_step(self, step: int) -> None:
        """Refit W after every ``every``-th optimizer step (migration mode)."""
        if self.mode == "align" and step % self.every == 0:
            self.refit()


def attach_alignment(model: nn.Module, config, teacher: TeacherLatents | None) -> LatentAlignment | None:
    """Add the run's alignment term to the objective ``model`` as ``model.teacher_align`` (before its optimizer
    is made, so a ``kd`` head is trained and everything is saved and resumed with the model).

    Raises:
        SjalignError: a config with a teacher but no latents, or latents without a teacher in the config.
    """
    if config.teacher is None:
        if teacher is not None:
            raise SjalignError("pretrain: teacher latents were given but the config names no teacher")
        return None
    if teacher is None:
        raise SjalignError(f"pretrain: the config names teacher {config.teacher['spec']} but no teacher latents "
                           "were given")
    align = LatentAlignment(config.vit.embed_dim, config.teacher)
    align.attach(teacher)
    model.add_module("teacher_align", align)
    return align


def fit_before_training(align: LatentAlignment, encoder: nn.Module, take, n: int, seed: int,
                        device: torch.device) -> None:
    """The first fit (unless a resumed run has one): the student ``encoder`` embeds a seeded sample of
    min(n, buffer) training rows under ``no_grad``; ``take(rows)`` gives their (m, C, H, W) images.
    The forward's FLOPs count as migration overhead."""
    from torch.utils.flop_counter import FlopCounterMode

    from sjalign.jepa.monitor import embed_images

    if bool(align.fitted):
        return
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, align.capacity), replace=False))
    with FlopCounterMode(display=False) as counter:
        z = embed_images(encoder, take(rows), device)
    align.add_flops(counter.get_total_flops())
    align.first_fit(z, rows)
