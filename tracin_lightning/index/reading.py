"""Reading an index's stored parts: rows through the inverted lists, exact chunks, sketches.

:class:`IndexReader` is the part of :class:`~tracin_lightning.index.query.InfluenceIndex` that knows
the on-disk layout (:mod:`~tracin_lightning.index.store`); the index answers queries with it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..engine.states import CheckpointState
from ..engine.structure import SampleGradients, pairwise_dot
from ..errors import TracInInputError
from .sketch import Sketch
from .store import PartSpec, part_file, per_checkpoint, unflatten

__all__ = ["CHUNK_BYTES", "IndexReader"]

#: bytes of stored gradients read per streamed chunk (bounds a streaming query's memory)
CHUNK_BYTES = 1 << 27


class IndexReader:
    """Reads the stored parts of an opened index (its attributes are set by ``InfluenceIndex``)."""

    directory: Path
    device: torch.device
    states: list[CheckpointState]
    parts: list[PartSpec]
    part_index: dict[str, int]
    sketch: Sketch | None
    shards: list[Path]
    bases: np.ndarray
    entry_rows: np.ndarray
    num_train: int
    memory_bytes: int
    _held: dict[tuple[int, int | None, int], Tensor]
    _inverted: dict[str, tuple[np.ndarray, np.ndarray, int]]

    # ------------------------------------------------------------- row mode
    def _row_scores(self, parts: Sequence[Mapping[str, Tensor]], t: int) -> tuple[np.ndarray, Tensor]:
        """Training rows sharing a looked-up row with test triple ``t`` (ascending) and their exact scores."""
        lists = []  # (grads key, test id, slot positions, entries)
        for key, (offsets, positions, slots) in self._inverted.items():
            ids = parts[0][f"{key}/ids"][t].cpu()
            for u in torch.unique(ids).tolist():
                found = np.asarray(positions[offsets[u] : offsets[u + 1]])
                lists.append((key, u, found, found // slots))
        if not lists:
            return np.zeros(0, dtype=np.int64), torch.zeros(0)
        entries = np.unique(np.concatenate([e for *_, e in lists]))
        scores = torch.zeros(entries.shape[0], dtype=torch.float32, device=self.device)
        memmaps: dict[tuple[int, int, int], np.ndarray] = {}
        for k, (arrays, state) in enumerate(zip(parts, self.states)):
            for key, u, found, entry in lists:
                if found.size == 0:
                    continue
                ids = arrays[f"{key}/ids"][t]
                grads = arrays[f"{key}/grads"][t]  # (S, d)
                query = grads[ids == u].sum(0).float()  # slots of the same row add up
                stored = self._gather(memmaps, self.part_index[f"{key}/grads"], k, found)
                where = torch.from_numpy(np.searchsorted(entries, entry)).to(self.device)
                scores.index_add_(0, where, state.learning_rate * (stored.to(self.device) @ query))
        return self.entry_rows[entries], scores.cpu()

    def _gather(
        self, memmaps: dict[tuple[int, int, int], np.ndarray], j: int, k: int, positions: np.ndarray
    ) -> Tensor:
        """Stored row gradients ``(m, d)`` of part ``j`` at checkpoint ``k`` at the (ascending) slots."""
        width = self.parts[j].shape[-1]
        slots = int(np.prod(self.parts[j].shape[:-1]))
        cuts = np.searchsorted(positions, self.bases * slots)
        pieces = []
        for r in range(len(self.shards)):
            if cuts[r] == cuts[r + 1]:
                continue
            if (j, k, r) not in memmaps:  # mapped for this query only: resident memory stays per query
                memmaps[(j, k, r)] = np.load(self.shards[r] / part_file(j, k), mmap_mode="r").reshape(
                    -1, width
                )
            pieces.append(memmaps[(j, k, r)][positions[cuts[r] : cuts[r + 1]] - self.bases[r] * slots])
        return torch.from_numpy(np.concatenate(pieces))

    # ---------------------------------------------------------- stream mode
    def stored_gradients(self) -> Iterator[tuple[np.ndarray, list[SampleGradients]]]:
        """Every training triple's stored gradients, in chunks of ``(rows, gradients)``.

        ``gradients`` holds one :class:`SampleGradients` per checkpoint. Exact indexes only (a projected
        one stores sketches, not gradients); each chunk's stored parts at all checkpoints take about
        ``CHUNK_BYTES``.
        """
        if self.sketch is not None:
            raise TracInInputError(f"{self.directory}: a projected index stores sketches, not the gradients")
        entry_bytes = sum(
            int(np.prod(p.shape, dtype=np.int64)) * np.dtype(p.dtype).itemsize for p in self.parts
        ) * max(1, len(self.states))
        step = max(1, CHUNK_BYTES // max(1, entry_bytes))
        for r, folder in enumerate(self.shards):
            size = int(self.bases[r + 1] - self.bases[r])
            for start in range(0, size, step):
                stop = min(size, start + step)
                shared = {
                    p.key: _read(folder / part_file(j, None), start, stop, self.device)
                    for j, p in enumerate(self.parts)
                    if not per_checkpoint(p.key)
                }
                stored = []
                for k in range(len(self.states)):
                    arrays = dict(shared)
                    for j, p in enumerate(self.parts):
                        if per_checkpoint(p.key):
                            arrays[p.key] = _read(folder / part_file(j, k), start, stop, self.device)
                    stored.append(unflatten(arrays))
                yield self.entry_rows[self.bases[r] + start : self.bases[r] + stop], stored

    def _stream(self, parts: Sequence[Mapping[str, Tensor]]) -> Iterator[tuple[np.ndarray, Tensor]]:
        """``(rows, (T, b) scores)`` per chunk of stored training gradients, every training triple once."""
        tests = [unflatten(arrays) for arrays in parts]
        for rows, stored in self.stored_gradients():
            scores = torch.zeros(tests[0].batch_size, len(rows), dtype=torch.float32, device=self.device)
            for test, train, state in zip(tests, stored, self.states):
                with torch.autocast(device_type=self.device.type, enabled=False):
                    scores += state.learning_rate * pairwise_dot(test, train)
            yield rows, scores

    def _stream_sketch(self, grads: Sequence[SampleGradients]) -> Any:
        """``(rows, (T, b) scores)`` per chunk: every score's sketched part and exact linear means."""
        sketch = self.sketch
        assert sketch is not None
        with torch.autocast(device_type=self.device.type, enabled=False):
            query = torch.zeros(grads[0].batch_size, sketch.dim, device=self.device)
            means: list[dict[str, Tensor]] = []
            for k, (g, state) in enumerate(zip(grads, self.states)):
                query += state.learning_rate * sketch.test(k, g)
                means.append({key: state.learning_rate * m for key, m in sketch.means(k, g).items()})
        mean_parts = [(j, p.key) for j, p in enumerate(self.parts) if p.key.endswith("/mean")]
        j = self.part_index["sketch"]
        width = sketch.dim + len(self.states) * sum(self.parts[i].shape[-1] for i, _ in mean_parts)
        step = max(1, CHUNK_BYTES // (4 * width))
        for r in range(len(self.shards)):
            size = int(self.bases[r + 1] - self.bases[r])
            for start in range(0, size, size if self._fits_memory() else step):
                stop = min(size, start + step)
                scores = query @ self._streamed(r, j, None, start, stop).T
                for k, found in enumerate(means):
                    for i, key in mean_parts:
                        scores += found[key] @ self._streamed(r, i, k, start, stop).T
                yield self.entry_rows[self.bases[r] + start : self.bases[r] + stop], scores

    def _streamed(self, shard: int, j: int, k: int | None, start: int, stop: int) -> Tensor:
        """Entries ``start:stop`` of a streamed part, from memory when the index fits ``memory_bytes``."""
        path = self.shards[shard] / part_file(j, k)
        if not self._fits_memory():
            return _read(path, start, stop, self.device)
        key = (shard, k, j)
        if key not in self._held:
            self._held[key] = _read(path, 0, int(self.bases[shard + 1] - self.bases[shard]), self.device)
        return self._held[key][start:stop]

    def _fits_memory(self) -> bool:
        streamed = sum(
            int(np.prod(p.shape, dtype=np.int64))
            * np.dtype(p.dtype).itemsize
            * (len(self.states) if per_checkpoint(p.key) else 1)
            for p in self.parts
            if p.key == "sketch" or p.key.endswith("/mean")
        )
        return streamed * self.num_train <= self.memory_bytes


def _read(path: Path, start: int, stop: int, device: torch.device) -> Tensor:
    """Entries ``start:stop`` of a stored part, read (not mapped) so memory stays at one chunk."""
    mapped = np.load(path, mmap_mode="r")
    block = np.array(mapped[start:stop])
    del mapped
    return torch.from_numpy(block).to(device)
