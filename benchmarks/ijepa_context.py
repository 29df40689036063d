"""Does a trained I-JEPA predictor use the content of its context? (a diagnostic, run by hand)

    python benchmarks/ijepa_context.py RUN [--max-states 10000] [--images 512] [--draws 4]

Loads an ``ijepa`` (or ``cjepa``) run and computes its prediction loss on held-out Fashion-MNIST
test images three ways, with the same masks and the same EMA targets:

* ``own``: the context tokens of the image itself (the training loss);
* ``other``: the context tokens of another image (the batch rolled by one), same positions;
* ``blank``: the context tokens of an all-black image, same positions.

If ``other`` and ``blank`` come close to ``own``, the predictor reaches its targets from the
positions alone, and the targets carry little of the image: the shortcut that keeps the EMA
target at its initialisation's rank in short runs (README, "Does it learn?").
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def main() -> None:
    from sjalign.data import open_dataset
    from sjalign.data.selection import Subset
    from sjalign.jepa import build_objective, load_checkpoint
    from sjalign.jepa.objectives.ijepa import ijepa_loss

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--max-states", type=int, default=10000)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--draws", type=int, default=4, help="mask draws averaged")
    args = parser.parse_args()

    tensors, config, _ = load_checkpoint(args.run)
    model = build_objective(config)
    model.load_state_dict(tensors)
    model.eval()
    selection = open_dataset(config.dataset, view=config.view, subset=Subset("all", None, args.max_states))
    x = selection.subset(np.flatnonzero(selection.is_test)[:args.images]).materialize()  # (n, C, H, W)
    contexts = {"own": x, "other": x.roll(1, 0), "blank": torch.zeros_like(x)}
    losses: dict[str, list[float]] = {k: [] for k in contexts}
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(args.draws):
            masks = model.sample_masks(len(x), generator)
            s = model.target_tokens(x, masks.targets)  # (M*B, T, D), the training targets
            for name, images in contexts.items():
                z = model.encoder(images, keep=masks.context)  # (B, Kc, D), same positions
                losses[name].append(ijepa_loss(model.predict(z, masks.context, masks.targets), s).item())
    zero = ijepa_loss(torch.zeros_like(s), s).item()
    print(f"{args.run}: prediction loss (smooth L1, held-out images) with the image's own context "
          f"{np.mean(losses['own']):.4f}, another image's {np.mean(losses['other']):.4f}, a blank image's "
          f"{np.mean(losses['blank']):.4f}; predicting zeros {zero:.4f}")


if __name__ == "__main__":
    main()
