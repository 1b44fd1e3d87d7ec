"""Peak RSS of fingerprinting a memory-mapped training set, side by side with the naive whole-tensor hash.

Builds an ``(N, 3)`` int64 ``.npy`` (default 20M triples, 480 MB), then, each in a fresh subprocess so
one method's pages cannot help or hurt another, memory-maps it as ``TriplesDataModule`` does
(``np.load(mmap_mode="r")`` + ``torch.from_numpy``) and hashes it:

- ``naive``: ``hashlib.sha256(tensor.numpy().tobytes())`` (what resume did before);
- ``chunks over the map``: :func:`tracin_lightning.outputs.digest.tensor_digest` forced to read the
  mapped memory in 1 MiB chunks (its fallback off Linux): no copy, but every page becomes resident;
- ``tensor_digest``: the function as resume uses it (reads the mapped file, pages stay unmapped).

The peak-RSS increase is ``VmHWM`` after the hash minus ``VmRSS`` before it (the peak is reset first
through ``/proc/self/clear_refs``). Linux only.

Run: ``PYTHONPATH=$PWD python benchmarks/fingerprint_memory.py [--triples 20000000] [--dir /tmp]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r"""
import hashlib, json, sys, time, warnings
import numpy as np, torch
import tracin_lightning.outputs.digest as fp

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)

path, method = sys.argv[1], sys.argv[2]
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # read-only memory map
    tensor = torch.from_numpy(np.load(path, mmap_mode="r"))
if method == "chunks over the map":
    fp._mapped_file = lambda address, nbytes: None  # hash the mapped memory itself
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset VmHWM to the current RSS
before = status("VmRSS")
start = time.perf_counter()
if method == "naive":
    digest = hashlib.sha256(tensor.numpy().tobytes()).hexdigest()
else:
    digest = fp.tensor_digest(tensor)
seconds = time.perf_counter() - start
print(json.dumps({"peak_increase": status("VmHWM") - before, "seconds": seconds, "digest": digest}))
"""

METHODS = ("naive", "chunks over the map", "tensor_digest")


def build(path: Path, triples: int) -> None:
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.int64, shape=(triples, 3))
    rng = np.random.default_rng(0)
    for start in range(0, triples, 1 << 20):  # in blocks: building it must not hold it all either
        stop = min(start + (1 << 20), triples)
        array[start:stop] = rng.integers(0, 15_000, size=(stop - start, 3))
    array.flush()
    del array


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triples", type=int, default=20_000_000)
    parser.add_argument("--dir", default=None, help="where to write the .npy (a temporary folder by default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "train.npy"
        build(path, args.triples)
        size = path.stat().st_size
        print(f"{args.triples:,} triples, {size / 2**20:,.0f} MiB: {path}")
        results = {}
        for method in METHODS:
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(path), method], capture_output=True, text=True, check=True
            )
            results[method] = json.loads(done.stdout.strip().splitlines()[-1])
    naive = results["naive"]
    print(f"{'method':<22} {'peak RSS increase':>18} {'seconds':>8}  {'RSS vs naive':>12}")
    for method, result in results.items():
        ratio = result["peak_increase"] / naive["peak_increase"]
        peak = result["peak_increase"] / 2**20
        print(f"{method:<22} {peak:>14,.1f} MiB {result['seconds']:>8.2f}  {ratio:>12.3f}")
    # the two tensor_digest routes hash the same bytes the same way; naive hashes raw bytes only
    same = results["chunks over the map"]["digest"] == results["tensor_digest"]["digest"]
    print(f"file route and memory route give the same digest: {same}")


if __name__ == "__main__":
    main()
