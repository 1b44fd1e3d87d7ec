"""Compare cached variant matrices with a fresh ``compute_influence(..., variant=...)`` on the same model.

    python experiments/drugmechdb/dmdb_check_variants.py --model DistMult --loss bce relatif cosine

Prints, per variant, the largest per-row relative difference (each held-out row against its own
largest absolute score) and the share of held-out edges whose top proponent is the same.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dmdb_benchmark as benchmark  # noqa: E402

import tracin_lightning  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="DistMult")
    parser.add_argument("--loss", default="bce")
    parser.add_argument("variants", nargs="+")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    warnings.filterwarnings("ignore", message=".*differs from the model.s training loss")
    torch.set_num_threads(1)
    settings = benchmark.FULL
    spec = next(m for m in settings.models if m.name == args.model)
    data = benchmark.load_data(settings)
    directory = HERE / "cache" / f"{spec.name.lower()}-{settings.key(spec)}"
    model, _ = benchmark.train_model(spec, data, directory, settings.seed)
    manifest = str(directory / "tracin" / "manifest.json")
    for variant in args.variants:
        cached = torch.load(directory / f"influence_{args.loss}_{variant}.pt", weights_only=True)["matrix"]
        fresh = tracin_lightning.compute_influence(
            model, data.train, data.heldout, checkpoints=manifest, loss=args.loss, variant=variant
        )
        scale = cached.abs().max(1).values.clamp_min(1e-30)
        relative = float(((fresh - cached).abs().max(1).values / scale).max())
        same = float((fresh.argmax(1) == cached.argmax(1)).float().mean())
        print(f"{variant}: largest per-row relative difference {relative:.1e}, same top proponent {same:.3f}")


if __name__ == "__main__":
    main()
