"""Answering influence queries from an index: exact, touching only what a test triple can reach.

For a row-only model (every parameter an embedding table: DistMult, ComplEx, TransE, RotatE, ... with
the ``bce`` or ``score`` loss) a training triple's gradient lives on the rows it looked up, so its
influence on a test triple is zero unless they share a looked-up row. A query computes the test
triple's reduced gradient at every checkpoint, reads the inverted lists of the rows it looked up,
gathers only the matching stored row gradients and sums their dot products: exactly the engine's
``pairwise_dot`` on those pairs, with every other training triple exactly 0. Models with shared dense
layers (ConvE), and the 1-N ``ce`` loss, touch every training triple: their exact queries stream over
the stored factors in chunks. A projected index (``sketch`` mode) streams one short sketch per
training triple instead, and adds the exact row parts through the inverted lists when it kept them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..engine.gradients import PerSampleGradients
from ..engine.influence import CheckpointState, test_gradients
from ..engine.structure import SampleGradients
from ..engine.topk import TopK
from ..engine.variants import InfluenceVariant, VariantHint
from ..errors import TracInInputError
from ..inputs.maps import LabelMaps, check_ids_fit_model
from ..inputs.names import Names
from .agreement import agreement
from .load import load_index
from .reading import IndexReader
from .sparse_topk import sparse_topk
from .store import (
    PartSpec,
    Sketch,
    flatten,
)
from .variants import check_variant, index_variant, variant_scores

__all__ = ["InfluenceIndex", "agreement"]  # agreement lives in .agreement, importable from here too


class InfluenceIndex(IndexReader):
    """An opened influence index (build it with :func:`~tracin_lightning.index.build.build_index`).

    The index stores the model (``model.pt``, pickled: open only indexes you trust) and copies of its
    checkpoint weights, and checks both against the sha256 digests in the manifest when opened.

    Use :meth:`open`; the constructor is internal.
    """

    def __init__(
        self,
        directory: Path,
        manifest: dict[str, Any],
        model: nn.Module,
        gradients: PerSampleGradients,
        states: list[CheckpointState],
        *,
        device: torch.device,
        test_batch_size: int,
        memory_bytes: int = 0,
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self.model = model
        self.gradients = gradients
        self.states = states
        self.device = device
        self.test_batch_size = test_batch_size
        self.memory_bytes = memory_bytes
        self._held: dict[tuple[int, int | None, int], Tensor] = {}  # streamed parts kept after a first read
        self.parts = [PartSpec.from_dict(p) for p in manifest["parts"]]
        self.part_index = {p.key: j for j, p in enumerate(self.parts)}
        sketch = manifest.get("sketch")
        self.sketch = (
            None
            if sketch is None
            else Sketch(
                dim=int(sketch["dim"]),
                seed=int(sketch["seed"]),
                keep_rows=bool(sketch["keep_rows"]),
                table_rows={k: int(v) for k, v in sketch["table_rows"].items()},
                directions=torch.load(directory / sketch["directions"]["file"], weights_only=True),
            )
        )
        self.shards = [directory / s["directory"] for s in manifest["shards"]]
        sizes = [int(s["rows"]) for s in manifest["shards"]]
        self.bases = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # shard entry offsets
        self.entry_rows = np.concatenate([np.load(folder / "rows.npy") for folder in self.shards])
        self.num_train = int(manifest["train_triples"]["count"])
        self._train: np.ndarray | None = None
        self.maps: LabelMaps | None = None
        self.names: Names | None = None
        if manifest.get("maps"):
            data = json.loads((directory / manifest["maps"]).read_text())
            self.maps = LabelMaps(data["entity_to_id"], data["relation_to_id"])
            if data.get("names") is not None:
                self.names = Names(entities=data["names"]["entities"], relations=data["names"]["relations"])
        self._inverted: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
        for key, info in manifest.get("inverted", {}).items():
            offsets = np.load(directory / "inverted" / info["offsets"])
            positions = np.load(directory / "inverted" / info["positions"], mmap_mode="r")
            self._inverted[key] = (offsets, positions, int(info["slots"]))

    # ------------------------------------------------------------------ open
    @classmethod
    def open(
        cls,
        directory: str | Path,
        *,
        model: nn.Module | str | None = None,
        checkpoints: Any = None,
        learning_rates: Sequence[float] | None = None,
        device: torch.device | str = "cpu",
        test_batch_size: int = 256,
        memory_bytes: int = 2**31,
    ) -> InfluenceIndex:
        """Open the index in ``directory``, checking its files against the manifest's digests.

        Args:
            directory: an index folder.
            model: optionally the model you mean to explain; refused unless its weights are the ones
                the index was built from (by sha256 of the state dict).
            checkpoints: optionally the checkpoints you mean (as for ``compute_influence``); refused
                unless their contents and learning rates are the indexed ones.
            learning_rates: learning rates for ``checkpoints``.
            device: where test gradients and dot products are computed.
            test_batch_size: test triples per gradient call.
            memory_bytes: a projected index whose streamed parts (sketches, linear means) take at most
                this many bytes keeps them in memory after the first query, so later queries do not
                read them again (0: always read them from disk).

        Raises:
            TracInInputError: no finished index there, files changed since the build, or a ``model``
                / ``checkpoints`` that is not the indexed one.
        """
        found = load_index(
            directory, model=model, checkpoints=checkpoints, learning_rates=learning_rates, device=device
        )
        return cls(
            found.directory,
            found.manifest,
            found.model,
            found.gradients,
            found.states,
            device=found.device,
            test_batch_size=test_batch_size,
            memory_bytes=memory_bytes,
        )

    # ---------------------------------------------------------------- inputs
    @property
    def mode(self) -> str:
        """``rows`` (inverted lists, exact), ``stream`` (exact, every triple) or ``sketch`` (projected)."""
        return str(self.manifest["mode"])

    @property
    def summary(self) -> str:
        """One line: which form the build chose and why (projected: its measured agreement too)."""
        return str(self.manifest.get("summary", f"{self.mode} index"))

    @property
    def train_triples(self) -> np.ndarray:
        """``(N, 3)`` training triple ids (memory-mapped)."""
        if self._train is None:
            self._train = np.load(self.directory / self.manifest["train_triples"]["file"], mmap_mode="r")
        return self._train

    def encode(self, triples: Tensor | Sequence[Sequence[Any]], *, source: str = "test triple") -> Tensor:
        """Test triples as ``(T, 3)`` ids: a tensor of ids, or ``[head, relation, tail]`` labels.

        Raises:
            TracInInputError: for an unknown label (naming it), or labels without maps.
        """
        if isinstance(triples, Tensor):
            test = triples.long()
        else:
            rows = [list(row) for row in triples]
            if rows and all(isinstance(x, str) for row in rows for x in row):
                if self.maps is None:
                    raise TracInInputError("this index has no label maps: give test triples as ids")
                test = self.maps.encode(rows, source=source)
            else:
                test = torch.tensor(rows, dtype=torch.long)
        if test.ndim != 2 or test.shape[1] != 3 or test.shape[0] == 0:
            raise TracInInputError(
                f"test triples must be a non-empty (T, 3) array, got shape {tuple(test.shape)}"
            )
        check_ids_fit_model(test, self.model, what="test triples", index=torch.arange(test.shape[0]))
        return test.to(self.device)

    def _test_grads(self, test: Tensor, variant: InfluenceVariant | None = None) -> list[SampleGradients]:
        with torch.enable_grad():
            grads = test_gradients(
                self.gradients, self.states, test, batch_size=self.test_batch_size, variant=variant
            )
        plan = self.gradients.plan
        paths = {} if plan is None else plan.describe()
        if paths != self.manifest["parameter_paths"]:
            raise TracInInputError(
                f"{self.directory}: the query's parameter paths {paths} differ from the build's "
                f"{self.manifest['parameter_paths']}"
            )
        return grads

    # --------------------------------------------------------------- queries
    def influence(
        self, test_triples: Tensor | Sequence[Sequence[Any]], *, variant: VariantHint = None
    ) -> Tensor:
        """``(T, N)`` float32 CPU influence of every training triple, as ``compute_influence`` gives.

        Exact for an exact index; for a projected one, an unbiased estimate (see ``summary``).

        Args:
            test_triples: ``(T, 3)`` ids, or label triples when the index has maps.
            variant: a scoring variant (``cosine``, ``relatif``, ``adam``, ``head-local``; see
                :mod:`~tracin_lightning.engine.variants`), as ``compute_influence(variant=...)`` gives
                it; None: plain TracInCP. An exact index only; it reads every stored training triple.

        Raises:
            TracInInputError: a variant on a projected index, ``adam`` on an index built from
                checkpoints without the optimizer's second moment, or a bad test triple.
        """
        chosen = self._variant(variant)
        test = self.encode(test_triples)
        if chosen is not None:
            out = torch.zeros(test.shape[0], self.num_train, dtype=torch.float32)
            for rows, scores in self._variant_stream(test, chosen):
                out[:, torch.from_numpy(rows)] = scores.cpu()
            return out
        grads = self._test_grads(test)
        parts = [flatten(g) for g in grads]
        out = torch.zeros(test.shape[0], self.num_train, dtype=torch.float32)
        if self.mode == "sketch":
            for rows, scores in self._stream_sketch(grads):
                out[:, torch.from_numpy(rows)] = scores.cpu()
        if self.mode == "rows" or (self.mode == "sketch" and self._inverted):
            for t in range(test.shape[0]):
                rows, values = self._row_scores(parts, t)
                out[t, torch.from_numpy(rows)] += values
        elif self.mode == "stream":
            for rows, scores in self._stream(parts):
                out[:, torch.from_numpy(rows)] = scores.cpu()
        return out

    def top_k(
        self, test_triples: Tensor | Sequence[Sequence[Any]], top_k: int = 10, *, variant: VariantHint = None
    ) -> TopK:
        """The ``top_k`` strongest proponents and opponents of each test triple, as ``compute_top_influence``.

        Proponents are the largest scores in descending order, opponents the smallest in ascending
        order; equal scores are ordered by ascending training row, exactly as a stable full sort of
        :meth:`influence`'s rows (training triples sharing nothing with the test triple score exactly 0
        and take part in that order like any other 0). Row-only indexes score only the training
        triples that share a row with the test triple and never form ``(T, N)``; streaming indexes
        keep a running top-k over the chunks, as does a query with a ``variant`` (see :meth:`influence`).
        """
        if top_k < 1:
            raise TracInInputError(f"top_k must be at least 1, got {top_k}")
        k = min(top_k, self.num_train)
        chosen = self._variant(variant)
        if chosen is not None:
            test = self.encode(test_triples)
            top = TopK.empty(num_test=test.shape[0], k=k)
            for rows, scores in self._variant_stream(test, chosen):
                top = top.update(scores.cpu(), torch.from_numpy(rows))
            return top
        if self.mode == "sketch":  # every training triple scores: a (T, N) block at a time
            test = self.encode(test_triples)
            blocks: list[TopK] = []
            for chunk in test.split(max(1, (1 << 26) // max(1, self.num_train))):
                scores = self.influence(chunk)
                blocks.append(
                    TopK.empty(num_test=chunk.shape[0], k=k).update(scores, torch.arange(self.num_train))
                )
            names = ("proponent_values", "proponent_index", "opponent_values", "opponent_index")
            return TopK(k, *(torch.cat([getattr(b, name) for b in blocks]) for name in names))
        test = self.encode(test_triples)
        parts = [flatten(g) for g in self._test_grads(test)]
        if self.mode == "rows":
            found = [
                sparse_topk(*self._row_scores(parts, t), self.num_train, k) for t in range(test.shape[0])
            ]
            return TopK(k, *(torch.stack([f[i] for f in found]) for i in range(4)))
        top = TopK.empty(num_test=test.shape[0], k=k)
        for rows, scores in self._stream(parts):
            top = top.update(scores.cpu(), torch.from_numpy(rows))
        return top

    # ------------------------------------------------------------- variants
    def _variant(self, variant: VariantHint) -> InfluenceVariant | None:
        """The variant asked for (None: plain), checked against this index and its checkpoints."""
        chosen = index_variant(variant, projected=self.mode == "sketch")
        if chosen is not None:
            check_variant(chosen, self.directory, self.manifest, self.states, self.device)
        return chosen

    def _variant_stream(self, test: Tensor, variant: InfluenceVariant) -> Iterator[tuple[np.ndarray, Tensor]]:
        """``(rows, (T, b) scores)`` under ``variant`` per chunk of stored training gradients."""
        grads = self._test_grads(test, variant)
        chunks = (
            (rows, torch.from_numpy(np.asarray(self.train_triples[rows])).to(self.device), stored)
            for rows, stored in self.stored_gradients()
        )
        yield from variant_scores(variant, self.gradients, self.states, grads, chunks)
