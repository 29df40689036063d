"""Time ``sjalign embed --encoder pixels`` on N images through each reader (run by hand, not a test).

    python benchmarks/readers.py [--n 10000] [--image-size 64] [--workers 0,2] [--runs norb,manifest,folder,aug]
                                 [--workdir DIR] [--keep]

Writes synthetic data in each format into a temporary folder (deleted afterwards unless
--keep): Fashion-MNIST images (28 px, upscaled to 96 px RGB with a per-class tint, so the files
compress like real pictures) as

* smallNORB: training-set files in the official binary-matrix layout (``-dat`` uint8
  (N', 2, 96, 96) uncompressed, memory-mapped; ``-cat``; ``-info``) holding ceil(N / 18) whole
  (category, instance, elevation, lighting) states x 18 azimuths; view ``azimuth=all`` with
  ``--max-states N`` embeds N of them;
* a manifest (CSV) of N states x 2 cameras pointing at N PNG files (the second camera's rows
  reuse the first camera's files), view ``front``;
* an image folder of N JPEG files (quality 90) in 10 class folders, views ``identity`` and ``aug-b``;

then runs the real CLI (a fresh process each time) and prints one markdown row per run: the
wall time of the whole command (start-up, reading the manifest or folder listing included) and
the embedding loop's images/s (reading, resizing, the view and the encoder) from its --json.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def source_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n (96, 96, 3) uint8 pictures and their labels (Fashion-MNIST when installed, else smooth noise)."""
    from PIL import Image

    try:
        from sjalign.data.fashion_mnist import load_fashion_mnist

        fm = load_fashion_mnist(split="all", max_states=n)
        base, labels = fm.images[:n], fm.labels[:n]
    except Exception as exc:  # noqa: BLE001 - a benchmark falls back to synthetic pictures
        print(f"(Fashion-MNIST unavailable: {exc}; using smooth noise)", file=sys.stderr)
        rng = np.random.default_rng(0)
        base = (rng.random((n, 7, 7)) * 255).astype(np.uint8)
        labels = rng.integers(0, 10, n)
    tints = np.random.default_rng(1).uniform(0.4, 1.0, size=(10, 3))
    out = np.empty((len(base), 96, 96, 3), np.uint8)
    for i, (img, y) in enumerate(zip(base, labels)):
        big = np.asarray(Image.fromarray(img).resize((96, 96), Image.Resampling.BILINEAR), np.float32)
        out[i] = (big[..., None] * tints[y]).astype(np.uint8)
    return out, np.asarray(labels)


def write_smallnorb(folder: Path, pictures: np.ndarray, n: int) -> None:
    from sjalign.data.smallnorb import SETS, write_norb

    folder.mkdir(parents=True)
    bases = list(itertools.product(range(5), (4, 6, 7, 8, 9), range(9), range(6)))[: -(-n // 18)]
    rows = [(c, i, e, a, li) for (c, i, e, li) in bases for a in range(0, 36, 2)]
    gray = pictures.mean(axis=3).astype(np.uint8)
    dat = np.empty((len(rows), 2, 96, 96), np.uint8)
    for k in range(len(rows)):
        dat[k, 0] = gray[k % len(gray)]
        dat[k, 1] = gray[(k + 1) % len(gray)]
    stem = SETS["training"]
    write_norb(folder / f"{stem}-dat.mat", dat)
    write_norb(folder / f"{stem}-cat.mat", np.array([r[0] for r in rows], np.int32))
    write_norb(folder / f"{stem}-info.mat", np.array([[r[1], r[2], r[3], r[4]] for r in rows], np.int32))


def write_manifest(folder: Path, pictures: np.ndarray, labels: np.ndarray) -> Path:
    from PIL import Image

    (folder / "img").mkdir(parents=True)
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["state_id", "view", "path", "label"])
        for i, (pic, y) in enumerate(zip(pictures, labels)):
            Image.fromarray(pic).save(folder / "img" / f"{i:05d}.png")
            for view in ("front", "rear"):
                w.writerow([i, view, f"img/{i:05d}.png", int(y)])
    return folder / "manifest.csv"


def write_folder(folder: Path, pictures: np.ndarray, labels: np.ndarray) -> Path:
    from PIL import Image

    for i, (pic, y) in enumerate(zip(pictures, labels)):
        d = folder / f"class{int(y)}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pic).save(d / f"{i:05d}.jpg", quality=90)
    return folder


def embed(args: list[str], out: Path) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "sjalign", "embed", "--encoder", "pixels", *args, "-o", str(out), "--json", "--force"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{res.stderr}")
    out.unlink()
    return wall, json.loads(res.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--runs", default="norb,manifest,folder,aug", help="which readers to time")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sjalign-readers-", dir=a.workdir))
    try:
        t0 = time.perf_counter()
        pictures, labels = source_images(a.n)
        write_smallnorb(root / "norb", pictures, a.n)
        manifest = write_manifest(root / "manifest", pictures, labels)
        folder = write_folder(root / "folder", pictures, labels)
        print(f"wrote the data in {time.perf_counter() - t0:.0f} s under {root}", file=sys.stderr)
        size = ["--image-size", str(a.image_size)]
        runs = [
            ("norb", "smallNORB (memmap)", ["--dataset", "smallnorb", "--data-dir", str(root / "norb"), "--view",
                                    "azimuth=all", "--max-states", str(a.n)]),
            ("manifest", "manifest (PNG)", ["--dataset", str(manifest), "--view", "front"]),
            ("folder", "image folder (JPEG)", ["--dataset", str(folder), "--view", "identity"]),
            ("aug", "image folder (JPEG), view aug-b", ["--dataset", str(folder), "--view", "aug-b"]),
        ]
        print("| reader | --num-workers | images | command wall s | embed loop s | img/s (loop) |")
        print("|---|---|---|---|---|---|")
        runs = [r[1:] for r in runs if r[0] in a.runs.split(",")]
        for (name, args), workers in itertools.product(runs, a.workers.split(",")):
            wall, out = embed([*args, *size, "--num-workers", workers, "--batch-size", "256"], root / "out.safetensors")
            print(f"| {name} | {workers} | {out['n']} | {wall:.1f} | {out['seconds']:.1f} | {out['items_per_s']:.0f} |",
                  flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
