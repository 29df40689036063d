"""Throughput of sjalign's embedding path vs a bare ``model(x)`` loop (run by hand, not a test).

    python benchmarks/embed.py [--n 512] [--batch-size 64] [--reps 3] [--device auto] [--weights FILE]
                               [--image-folder --num-workers 2]

Both sides use the same timm model (tf_efficientnet_lite0 with the EfficientNet-Lite0 weights
converted into a temporary folder, or --weights / --random), the same batch size and device, in
the same process, with repetitions interleaved (sjalign, bare, sjalign, bare, ...):

* sjalign: ``sjalign.embed.embed_observations`` with the TimmEncoder on the raw 28x28 grayscale
  observations, i.e. including its preprocessing (resize to 224, grey -> RGB, normalise), the
  pooled features and the copy back to the CPU as float32 numpy;
* bare: ``with torch.no_grad(): model(x)`` over the already preprocessed (B, 3, 224, 224) tensors.

With ``--image-folder`` the sjalign side reads the images from files instead, as ``sjalign embed
--dataset FOLDER --num-workers W`` does: the n images are written once as 28x28 grayscale PNGs into a
temporary class-per-folder tree, and :func:`sjalign.embed.embed_dataset` decodes them in W DataLoader
worker processes (``--image-size 28``, so both sides start from the same pixels) while the encoder runs.

Prints images/s of each (median over repetitions) and the ratio sjalign / bare (target >= 0.9).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def observations(n: int) -> torch.Tensor:
    """n Fashion-MNIST images (N, 1, 28, 28) in [0, 1], or random ones when it is not installed."""
    try:
        from sjalign.data import load_observations

        return load_observations("fashion-mnist", max_states=n).items[:n]
    except Exception as exc:  # noqa: BLE001 - a benchmark falls back to noise of the same shape
        print(f"(Fashion-MNIST unavailable: {exc}; using random 28x28 images)")
        return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512, help="images per repetition")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--arch", default="tf_efficientnet_lite0")
    ap.add_argument("--weights", default=None, help="safetensors weights (default: convert EfficientNet-Lite0)")
    ap.add_argument("--image-folder", action="store_true", help="sjalign reads PNG files through a DataLoader")
    ap.add_argument("--num-workers", type=int, default=2, help="DataLoader workers with --image-folder")
    args = ap.parse_args()

    from sjalign.embed import embed_dataset, embed_observations
    from sjalign.encoders import EncoderOptions, create_encoder

    folder = tempfile.TemporaryDirectory()
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights
        if weights is None:
            from sjalign.convert import convert_to_timm, default_source, save_timm_weights

            arch, find = default_source("efficientnet-lite0")
            weights = str(Path(tmp) / "lite0.safetensors")
            save_timm_weights(weights, convert_to_timm(find(), arch), arch=arch, source_path=find())
        enc = create_encoder(f"timm:{args.arch}@{weights}",
                             EncoderOptions(device=args.device, dtype=args.dtype))
    model, device = enc.model, enc.device
    raw = observations(args.n)
    batches = [enc.preprocess(raw[i:i + args.batch_size]) for i in range(0, len(raw), args.batch_size)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    dataset = write_image_folder(raw, Path(folder.name)) if args.image_folder else None

    def run_sjalign() -> float:
        start = time.perf_counter()
        if dataset is None:
            z = embed_observations(enc, raw, batch_size=args.batch_size)
        else:
            z = embed_dataset(enc, dataset, batch_size=args.batch_size, num_workers=args.num_workers)
        assert z.shape == (len(raw), enc.num_features)
        return len(raw) / (time.perf_counter() - start)

    def run_bare() -> float:
        sync()
        start = time.perf_counter()
        with torch.no_grad(), enc._autocast():
            for x in batches:
                model(x)
        sync()
        return len(raw) / (time.perf_counter() - start)

    source = f"PNG files, {args.num_workers} DataLoader workers" if dataset is not None else "in memory"
    print(f"{args.arch} on {device} ({args.dtype}), {len(raw)} images of {tuple(raw.shape[1:])} ({source}) -> "
          f"{tuple(batches[0].shape[1:])}, batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    with torch.no_grad():  # warm-up (allocator, cuDNN autotuning, first-call overheads)
        enc.embed_batch(raw[:args.batch_size])
        model(batches[0])
    sj, bare = [], []
    for rep in range(args.reps):
        # alternate which side goes first, so drifting load or clocks favour neither
        if rep % 2 == 0:
            sj.append(run_sjalign())
            bare.append(run_bare())
        else:
            bare.append(run_bare())
            sj.append(run_sjalign())
        print(f"  rep {rep + 1}: sjalign {sj[-1]:8.1f} img/s   bare model(x) {bare[-1]:8.1f} img/s   "
              f"ratio {sj[-1] / bare[-1]:.3f}")
    s, b = statistics.median(sj), statistics.median(bare)
    paired = statistics.median(a / c for a, c in zip(sj, bare))
    print(f"median: sjalign {s:.1f} img/s, bare {b:.1f} img/s, ratio {s / b:.3f}; median of per-rep ratios "
          f"{paired:.3f} (target >= 0.9)")
    folder.cleanup()


def write_image_folder(images: torch.Tensor, root: Path):
    """Write (n, 1, H, W) images in [0, 1] as 8-bit grayscale PNGs (one class folder) and open them as sjalign
    embed would: a lazy :class:`~sjalign.data.lazy.ViewDataset` at the images' own size."""
    from PIL import Image

    from sjalign.data import open_dataset

    (root / "all").mkdir(parents=True)
    pixels = (images[:, 0] * 255).round().to(torch.uint8).numpy()
    for i, img in enumerate(pixels):
        Image.fromarray(img, mode="L").save(root / "all" / f"{i:06d}.png")
    return open_dataset(str(root), image_size=int(images.shape[-1]))


if __name__ == "__main__":
    main()
