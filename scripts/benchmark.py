"""Speed of exact TracIn: this package against the classic loop, dense vmap and Captum, in one run.

All methods run on the same model, training triples and test triples in this process, so the
ratios are comparable even on a shared, noisy machine. The slow methods are timed on a subset of
training triples and extrapolated (marked in the table); their results are checked against ours.

    python scripts/benchmark.py                                   # Kinships ConvE, 100 test triples
    python scripts/benchmark.py --synthetic --num-triples 1000000 --num-entities 100000 --model DistMult
    python scripts/benchmark.py --scaling                         # 1 vs 100 test triples, N vs 2N training

Prints a markdown table and writes the numbers as JSON (``--output``).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tracin_lightning._io import write_json
from tracin_lightning.engine.gradients import PerSampleGradients, select_parameters
from tracin_lightning.engine.losses import TripleLoss
from tracin_lightning.engine.structure import pairwise_dot

CONVE = dict(embedding_dim=200, output_channels=32)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def build(args: argparse.Namespace) -> tuple[nn.Module, Tensor, Tensor, str]:
    from pykeen.models import model_resolver

    kwargs: dict[str, Any] = dict(CONVE) if args.model == "ConvE" else {"embedding_dim": args.dim}
    if args.synthetic:
        from pykeen.triples import CoreTriplesFactory

        generator = torch.Generator().manual_seed(0)
        triples = torch.stack(
            [
                torch.randint(0, args.num_entities, (args.num_triples,), generator=generator),
                torch.randint(0, args.num_relations, (args.num_triples,), generator=generator),
                torch.randint(0, args.num_entities, (args.num_triples,), generator=generator),
            ],
            dim=1,
        )
        factory = CoreTriplesFactory.create(
            mapped_triples=triples,
            num_entities=args.num_entities,
            num_relations=args.num_relations,
            create_inverse_triples=args.inverse,
        )
        if args.model == "ConvE":
            kwargs["embedding_dim"] = args.dim
        train, test = triples, triples[: args.num_test]
        what = f"synthetic {args.num_triples:,} triples, {args.num_entities:,} entities, dim {args.dim}"
    else:
        from pykeen.datasets import get_dataset

        dataset = get_dataset(dataset=args.dataset, dataset_kwargs=dict(create_inverse_triples=args.inverse))
        factory = dataset.training
        train, test = factory.mapped_triples, dataset.testing.mapped_triples[: args.num_test]
        what = f"{args.dataset} ({train.shape[0]:,} training triples)"
    model = model_resolver.make(args.model, triples_factory=factory, random_seed=0, **kwargs).to(args.device)
    model.eval()
    return model, train.to(args.device), test.to(args.device), what


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


# ------------------------------------------------------------------------------------------- methods
def ours(
    loss: TripleLoss,
    params: list[str],
    state: dict[str, Tensor],
    train: Tensor,
    test: Tensor,
    batch_size: int,
    factorize: bool = True,
) -> Tensor:
    psg = PerSampleGradients(loss=loss, params=params, factorize=factorize)
    cached = psg(state, test)
    return torch.cat([pairwise_dot(cached, psg(state, batch)) for batch in train.split(batch_size)], dim=1)


def classic(loss: TripleLoss, model: nn.Module, train: Tensor, test: Tensor) -> Tensor:
    params = [p for p in model.parameters() if p.requires_grad]

    def flat(triple: Tensor) -> Tensor:
        grads = torch.autograd.grad(loss(triple.view(1, 3)).sum(), params, allow_unused=True)
        return torch.cat(
            [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)]
        )

    with torch.enable_grad():
        test_grads = torch.stack([flat(t) for t in test])
        return torch.stack([test_grads @ flat(t) for t in train], dim=1)


def forward_backward(loss: TripleLoss, model: nn.Module, train: Tensor, batch_size: int) -> None:
    # The floor: one ordinary batched training pass (no per-sample anything) over the same triples.
    with torch.enable_grad():
        for batch in train.split(batch_size):
            model.zero_grad(set_to_none=True)
            loss(batch).sum().backward()
    model.zero_grad(set_to_none=True)


def captum_tracin(loss: TripleLoss, model: nn.Module, train: Tensor, test: Tensor, batch_size: int) -> Tensor:
    from captum.influence import TracInCP

    class Wrapped(nn.Module):  # Captum calls model(*features) and loss_fn(outputs, labels)
        def __init__(self) -> None:
            super().__init__()
            self.loss = loss

        def forward(self, hrt: Tensor) -> Tensor:
            return self.loss(hrt)  # the per-triple loss as the "output"

    def loss_fn(outputs: Tensor, labels: Tensor) -> Tensor:
        return outputs  # per-sample losses: reduction "none", as Captum requires here

    loss_fn.reduction = "none"  # type: ignore[attr-defined]
    wrapped = Wrapped()
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "checkpoint.pt")
        torch.save(wrapped.state_dict(), path)
        dataset = torch.utils.data.TensorDataset(train, torch.ones(train.shape[0]))

        def load(module: nn.Module, file: str) -> float:
            module.load_state_dict(torch.load(file, weights_only=True))
            return 1.0  # learning rate

        tracin = TracInCP(wrapped, dataset, [path], checkpoints_load_func=load, loss_fn=loss_fn, batch_size=1)
        with torch.enable_grad():
            return tracin.influence((test, torch.ones(test.shape[0])), show_progress=False)


# ------------------------------------------------------------------------------------------- runs
def row(name: str, seconds: float, triples: int, base: float | None, note: str = "") -> dict[str, Any]:
    per = seconds / triples
    return {
        "method": name,
        "seconds": seconds,
        "triples": triples,
        "ms_per_triple": 1e3 * per,
        "triples_per_second": 1 / per,
        "speedup_vs_classic": (base / per) if base else None,
        "note": note,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| method | ms / training triple | training triples / s | speed-up vs classic | note |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        speed = f"{r['speedup_vs_classic']:.0f}x" if r["speedup_vs_classic"] else "1x"
        lines.append(
            f"| {r['method']} | {r['ms_per_triple']:.3f} | {r['triples_per_second']:,.0f} | {speed} | "
            f"{r['note']} |"
        )
    return "\n".join(lines)


def compare(args: argparse.Namespace) -> dict[str, Any]:
    model, train, test, what = build(args)
    loss = TripleLoss(model=model, loss=args.loss, inverse=args.inverse)
    params = select_parameters(model, None)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    n = train.shape[0]
    ours(loss, params, state, train[:64], test, args.batch_size)  # warm-up
    seconds, full = timed(lambda: ours(loss, params, state, train, test, args.batch_size), args.device)
    ours_row = row("tracin-lightning engine (rows + rank-one factors)", seconds, n, None, f"all {n:,}")
    floor, _ = timed(lambda: forward_backward(loss, model, train, args.batch_size), args.device)
    rows: list[dict[str, Any]] = []
    checks: dict[str, float] = {}
    classic_per = None
    if not args.synthetic or args.classic_triples:
        subset = train[: args.classic_triples]
        s, reference = timed(lambda: classic(loss, model, subset, test), args.device)
        classic_per = s / subset.shape[0]
        rows.append(
            row(
                "classic loop (one backward per triple, dense)",
                s,
                subset.shape[0],
                classic_per,
                f"{subset.shape[0]} triples, extrapolated",
            )
        )
        scale = reference.abs().max()
        checks["engine"] = float((full[:, : subset.shape[0]] - reference).abs().max() / scale)
        if not args.synthetic:
            subset_v = train[: args.vmap_triples]
            s, dense = timed(
                lambda: ours(loss, params, state, subset_v, test, 64, factorize=False), args.device
            )
            rows.append(
                row(
                    "dense vmap over all parameters",
                    s,
                    subset_v.shape[0],
                    classic_per,
                    f"{subset_v.shape[0]} triples, extrapolated",
                )
            )
            checks["dense vmap"] = float((dense[:, : subset.shape[0]] - reference).abs().max() / scale)
            if not args.no_captum:
                try:
                    subset_c = train[: args.captum_triples]
                    s, influence = timed(lambda: captum_tracin(loss, model, subset_c, test, 1), args.device)
                    rows.append(
                        row(
                            "Captum TracInCP",
                            s,
                            subset_c.shape[0],
                            classic_per,
                            f"{subset_c.shape[0]} triples, extrapolated",
                        )
                    )
                    m = min(subset_c.shape[0], subset.shape[0])
                    checks["captum"] = float((influence[:, :m] - reference[:, :m]).abs().max() / scale)
                except Exception as error:  # report, do not hide
                    rows.append({"method": "Captum TracInCP", "error": repr(error)})
                    print(f"Captum failed: {error!r}", file=sys.stderr)
    if classic_per:
        ours_row["speedup_vs_classic"] = classic_per / (seconds / n)
    captum_rows = [r for r in rows if r["method"] == "Captum TracInCP" and "error" not in r]
    if captum_rows:
        ours_row["speedup_vs_captum"] = captum_rows[0]["ms_per_triple"] / (1e3 * seconds / n)
    rows.append(ours_row)
    rows.append(
        row("one batched forward+backward (floor)", floor, n, classic_per, "not TracIn: the reference cost")
    )
    return {
        "setup": what,
        "model": args.model,
        "loss": args.loss,
        "inverse": args.inverse,
        "num_test": test.shape[0],
        "num_train": n,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "batch_size": args.batch_size,
        "rows": rows,
        "full_pass_over_forward_backward": seconds / floor,
        "max_relative_difference_vs_classic": checks,
        "peak_rss_gib": peak_rss_gib(),
        "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None,
    }


def scaling(args: argparse.Namespace) -> dict[str, Any]:
    model, train, test, what = build(args)
    loss = TripleLoss(model=model, loss=args.loss, inverse=args.inverse)
    params = select_parameters(model, None)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    ours(loss, params, state, train[:64], test, args.batch_size)
    half = train[: train.shape[0] // 2]
    out = {"setup": what}
    for name, tr, te in (
        ("N/2 train, 1 test", half, test[:1]),
        ("N/2 train, T test", half, test),
        ("N train, T test", train, test),
    ):
        out[name] = timed(
            lambda tr=tr, te=te: ours(loss, params, state, tr, te, args.batch_size), args.device
        )[0]
    out["T test / 1 test"] = out["N/2 train, T test"] / out["N/2 train, 1 test"]
    out["N / (N/2)"] = out["N train, T test"] / out["N/2 train, T test"]
    return out


def ours_row_of(result: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in result["rows"] if r["method"].startswith("tracin-lightning"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="ConvE", help="PyKEEN model (ConvE, DistMult, TransE, ComplEx, ...)"
    )
    parser.add_argument("--dataset", default="kinships", help="bundled PyKEEN dataset")
    parser.add_argument("--no-inverse", dest="inverse", action="store_false", help="no inverse triples")
    parser.add_argument("--loss", default="bce", choices=["bce", "score", "ce"])
    parser.add_argument("--num-test", type=int, default=100, help="test triples")
    parser.add_argument("--batch-size", type=int, default=512, help="training triples per batch")
    parser.add_argument("--classic-triples", type=int, default=100, help="subset for the classic loop")
    parser.add_argument("--vmap-triples", type=int, default=256, help="subset for dense vmap")
    parser.add_argument("--captum-triples", type=int, default=100, help="subset for Captum")
    parser.add_argument("--no-captum", action="store_true", help="skip Captum")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--synthetic", action="store_true", help="random graph of the given size")
    parser.add_argument("--num-triples", type=int, default=1_000_000)
    parser.add_argument("--num-entities", type=int, default=100_000)
    parser.add_argument("--num-relations", type=int, default=50)
    parser.add_argument("--dim", type=int, default=200, help="embedding dimension (synthetic)")
    parser.add_argument("--scaling", action="store_true", help="time vs number of test and training triples")
    parser.add_argument("--output", default="runs/benchmark.json", help="JSON results")
    args = parser.parse_args()
    if args.synthetic and "--classic-triples" not in sys.argv:
        args.classic_triples = 0
    logging.getLogger("pykeen").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    result = scaling(args) if args.scaling else compare(args)
    result["environment"] = {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": " ".join(sys.argv),
    }
    if "rows" in result:
        print(
            f"\n{result['setup']}, {args.model}, loss {args.loss}, {result['num_test']} test triples, "
            f"{result['num_parameters']:,} parameters, {args.device} ({torch.get_num_threads()} threads)\n"
        )
        print(table([r for r in result["rows"] if "error" not in r]))
        print(
            f"\nfull pass / one batched forward+backward: {result['full_pass_over_forward_backward']:.2f}x; "
            f"peak RSS {result['peak_rss_gib']:.2f} GiB; max relative difference vs classic: "
            f"{result['max_relative_difference_vs_classic']}"
        )
    else:
        print(json.dumps(result, indent=2))
    write_json(args.output, result)


if __name__ == "__main__":
    main()
