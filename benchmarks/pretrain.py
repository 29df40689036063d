"""Images/s of sjalign's trainer vs a minimal hand-written I-JEPA loop (run by hand, not a test).

    python benchmarks/pretrain.py [--n 1024] [--batch-size 128] [--epochs 3] [--reps 3] [--device auto]
                                  [--model vit_tiny] [--precision fp32|bf16] [--compile] [--no-progress]
                                  [--threads N]

Both sides train the same I-JEPA model (same config, same seed, so the same initial weights),
on the same Fashion-MNIST images (identity view), with the same batch size, the same shuffled
batches and the same multi-block masks (each draws them from a generator seeded alike, in the
same order), in the same process, with repetitions interleaved (sjalign, minimal, sjalign, ...):

* sjalign: ``sjalign.jepa.pretrain`` as ``sjalign pretrain`` runs it — warm-up + cosine learning
  rate, gradient clipping, fused AdamW, EMA, FLOP counting, a progress listener that reads the
  loss every step (``--no-progress`` drops it), and an atomic train state + checkpoint + log line
  written to a temporary run folder after every epoch. Timed from the end of epoch 1 (warm-up) to
  the end of the last epoch's checkpoint, so epochs 2..E with their file writes.
* minimal: the loop one writes by hand — ``loss = model(x, masks)``, ``zero_grad``, ``backward``,
  ``torch.optim.AdamW(params, lr)`` with its defaults, and the EMA as a per-parameter
  ``mul_/add_`` loop as in the I-JEPA reference; constant learning rate, no clipping, no files.
  The first epoch's worth of steps is the warm-up; the same number of steps as sjalign is timed.
* naive fp32 (CUDA only; on the CPU it is the minimal loop): the minimal loop in fp32 without
  autocast, the baseline of the GPU target (sjalign with ``--precision bf16`` >= 1.3x naive).

Prints images/s of each side (median over repetitions, with min-max) and the ratio
sjalign / minimal (target >= 1.0 on the CPU), per wall-clock second and per CPU second of this
process: on a machine shared with other jobs the wall clock swings by tens of per cent between
repetitions, while CPU time (with ``--threads 1``) counts only this process's own work. On CUDA
read the wall clock (the GPU's work is not CPU time).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time

import torch


def images_of(n: int) -> torch.Tensor:
    """n Fashion-MNIST images (N, 1, 28, 28) in [0, 1], or random ones when it is not installed."""
    try:
        from sjalign.data import load_dataset, view_images

        ds = load_dataset("fashion-mnist", max_states=max(n, 7) * 7 // 6 + 1)
        train = ~ds.is_test
        return view_images(ds.images[train][:n], ds.state_ids[train][:n], "identity")
    except Exception as exc:  # noqa: BLE001 - a benchmark falls back to noise of the same shape
        print(f"(Fashion-MNIST unavailable: {exc}; using random 28x28 images)")
        return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def clocks() -> tuple[float, float]:
    """(wall time, this process's CPU time) in seconds."""
    return time.perf_counter(), time.process_time()


def rates(images: int, start: tuple[float, float], end: tuple[float, float]) -> tuple[float, float]:
    """Images per wall-clock second and per CPU second of this process."""
    return images / (end[0] - start[0]), images / (end[1] - start[1])


FLOPS_PER_IMAGE: list[float] = []  # the trainer's own count, training FLOPs per image (filled by run_sjalign)


def run_sjalign(config, images: torch.Tensor, progress: bool) -> tuple[float, float]:
    """Images/s (wall, CPU) of ``pretrain`` over epochs 2..E (with their checkpoints)."""
    from sjalign.jepa import pretrain

    marks: list[tuple[float, float]] = []
    on_step = (lambda step, total, loss, img_s: None) if progress else None
    with tempfile.TemporaryDirectory() as tmp:
        summary = pretrain(config, images, tmp, on_step=on_step, on_epoch=lambda record: marks.append(clocks()))
    steps = len(images) // config.batch_size
    FLOPS_PER_IMAGE.append(summary["flops"] / (config.epochs * steps * config.batch_size))
    return rates((config.epochs - 1) * steps * config.batch_size, marks[0], marks[-1])


def gemm_tflops(device: torch.device, n: int = 8192, reps: int = 10) -> float:
    """Measured bf16 matrix-product rate (TFLOP/s) of an n×n×n product on ``device``: the peak
    that the trainer's FLOP rate is compared with (median of ``reps`` event-timed products)."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n ** 3 / statistics.median(times) / 1e12


def run_minimal(config, images: torch.Tensor, device: torch.device, precision: str) -> tuple[float, float]:
    """Images/s (wall, CPU) of a minimal hand-written I-JEPA loop over the same steps as :func:`run_sjalign`."""
    from sjalign.jepa import build_objective
    from sjalign.jepa.objectives.ijepa import ema_momentum

    torch.manual_seed(config.seed)
    model = build_objective(config).to(device)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    data = images.to(device)
    n, b = len(images), config.batch_size
    steps = n // b
    total = steps * config.epochs
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" and device.type == "cuda"
           else contextlib.nullcontext())
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    step, start = 0, (0.0, 0.0)
    for epoch in range(config.epochs):
        if epoch == 1:
            sync()
            start = clocks()
        order = torch.randperm(n, generator=gen)
        for i in range(steps):
            masks = model.sample_masks(b, gen)
            masks = type(masks)(*(m.to(device) for m in masks))
            x = data[order[i * b:(i + 1) * b].to(device)]
            with amp:
                loss = model(x, masks)
            opt.zero_grad()
            loss.backward()
            opt.step()
            m = ema_momentum(step, total, config.ema)
            with torch.no_grad():
                for pt, p in zip(model.target_encoder.parameters(), model.encoder.parameters()):
                    pt.mul_(m).add_((1.0 - m) * p.detach())
            step += 1
    sync()
    return rates((config.epochs - 1) * steps * b, start, clocks())


def summary(name: str, values: list[tuple[float, float]]) -> str:
    wall, cpu = [v[0] for v in values], [v[1] for v in values]
    return (f"{name:>12}: {statistics.median(wall):8.1f} img/s wall (min {min(wall):.1f}, max {max(wall):.1f}); "
            f"{statistics.median(cpu):8.1f} img per CPU-s (min {min(cpu):.1f}, max {max(cpu):.1f})")


def ratio(name: str, a: list[tuple[float, float]], b: list[tuple[float, float]], target: str) -> str:
    lines = []
    for k, clock in enumerate(("wall", "CPU")):
        r = [x[k] / y[k] for x, y in zip(a, b)]
        lines.append(f"ratio {name} ({clock}): median {statistics.median(r):.3f}, min {min(r):.3f}, max {max(r):.3f} "
                     f"over {len(r)} reps ({target})")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024, help="training images (steps per epoch = n // batch size)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3, help="epoch 1 is the warm-up")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default="vit_tiny")
    ap.add_argument("--precision", default=None, choices=["fp32", "bf16"], help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--compile", action="store_true", help="torch.compile in sjalign (not in the loops)")
    ap.add_argument("--no-progress", action="store_true", help="no per-step listener (as --json)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.epochs < 2:
        ap.error("--epochs must be >= 2 (epoch 1 is the warm-up)")

    from sjalign.device import resolve_device
    from sjalign.jepa import PretrainConfig

    device = resolve_device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    config = PretrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size, device=str(device),
                            precision=precision, compile=args.compile, seed=0)
    images = images_of(args.n)
    if config.vit.img_size != images.shape[-1]:
        images = torch.nn.functional.interpolate(images, size=config.vit.img_size, mode="bilinear")
        images = images.expand(-1, config.vit.in_chans, -1, -1).contiguous()
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model}, "
          f"{len(images)} images, batch {args.batch_size}, {args.epochs} epochs "
          f"({len(images) // args.batch_size} steps each; epoch 1 = warm-up), {precision}, {args.reps} reps")
    sj, mini, naive = [], [], []
    for rep in range(args.reps):
        sj.append(run_sjalign(config, images, not args.no_progress))
        mini.append(run_minimal(config, images, device, precision))
        if device.type == "cuda":
            naive.append(run_minimal(config, images, device, "fp32"))
        print(f"rep {rep + 1}: img/s wall (per CPU-s): sjalign {sj[-1][0]:.1f} ({sj[-1][1]:.1f}), "
              f"minimal {mini[-1][0]:.1f} ({mini[-1][1]:.1f})"
              + (f", naive fp32 {naive[-1][0]:.1f} ({naive[-1][1]:.1f})" if naive else ""), flush=True)
    print(summary("sjalign", sj))
    print(summary("minimal", mini))
    print(ratio("sjalign / minimal", sj, mini, "target >= 1.0 on CPU"))
    flops = statistics.median(FLOPS_PER_IMAGE)
    achieved = statistics.median(v[0] for v in sj) * flops / 1e12
    print(f"sjalign trains at {achieved:.3f} TFLOP/s (the trainer's count: {flops:.3e} FLOPs per image)")
    if naive:
        print(summary("naive fp32", naive))
        print(ratio("sjalign / naive fp32", sj, naive, "target >= 1.3 on a GPU; read the wall clock"))
        peak = gemm_tflops(device)
        print(f"bf16 GEMM 8192^3 measured in this run: {peak:.0f} TFLOP/s; sjalign reaches "
              f"{100 * achieved / peak:.2f} % of it")
    else:
        print("naive fp32 loop: on the CPU it is the minimal loop above (no bf16 there); run on CUDA for the "
              "GPU target (>= 1.3x)")


if __name__ == "__main__":
    main()
