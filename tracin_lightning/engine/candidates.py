"""Candidate filtering: which training triples may explain each test triple, from graph distances.

Pure torch (no Lightning, no files). The training triples form an *undirected* multigraph over the
entities (relations and directions ignored). For every test triple ``(h, r, t)`` a capped
breadth-first search gives the distances ``d_h`` and ``d_t`` of every entity from ``h`` and from ``t``,
stored as ``uint8`` ``(T, num_entities)`` arrays (``UNREACHED`` = 255 beyond the cap). Whether a
training triple ``(a, r', b)`` is a candidate for test triple ``i`` is then a few gathers:

- ``neighbourhood`` (``hops = n``): ``min(d_h(a), d_t(a), d_h(b), d_t(b)) <= n - 1``, i.e. one of the
  triple's endpoints lies within ``n - 1`` hops of ``h`` or ``t``. ``n = 1``: the triples touching
  ``h`` or ``t``; ``n = 2``: also those touching a neighbour of ``h`` or ``t``; and so on.
- ``paths`` (``max_path_length = L``): ``min(d_h(a) + 1 + d_t(b), d_h(b) + 1 + d_t(a)) <= L``: the
  shortest walk from ``h`` to ``t`` through the edge ``a - b`` has at most ``L`` edges. Every edge on a
  simple path of length ``<= L`` between ``h`` and ``t`` passes; so do a few edges whose shortest walk
  is not simple (e.g. when ``h`` and ``t`` share a neighbour ``x``, an edge ``x - y`` with ``y`` another
  common neighbour passes at ``L = 3``), so the set is a superset of the edges on simple paths.

The direct edge: the training triples between ``h`` and ``t`` themselves (the test triple, if it is
also a training triple, and any other relation between the two, in either direction) are candidates
in both modes (a path of length 1). In ``paths`` mode the distances ``d_h`` and ``d_t`` are computed
*without* the direct ``h - t`` edges, so no longer path is made by stepping across the direct edge
(no ``h -> t -> x -> t`` walks: without this, every edge at ``t`` would pass at ``L = 3`` whenever
``h`` and ``t`` are linked). A simple path from ``h`` to ``t`` cannot use a direct edge except as its
only edge, so this loses nothing. In ``neighbourhood`` mode removing them changes nothing (anything
reached across the direct edge is reached from the other endpoint directly).

Cost: the search expands only the frontier (CSR adjacency, ``index_select`` over neighbour lists,
in chunks of bounded size), so its work is the number of (source, edge) pairs it touches within the
cap: nothing at all for ``hops = 1``; the neighbour lists of ``h`` and ``t`` for ``hops = 2`` or
``L = 2``. Memory: ``2 * T * num_entities`` bytes for the distances (``T * num_entities`` kept in
``neighbourhood`` mode) plus ``2 * N`` neighbour ids while searching. Works on any device.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "MODES",
    "UNREACHED",
    "CandidateFilter",
    "bfs_distances",
    "build_filter",
    "check_radius",
    "count_candidates",
    "undirected_adjacency",
]

Mode = Literal["all", "neighbourhood", "paths"]
#: the filter modes; ``all`` means no filtering
MODES: tuple[str, ...] = ("all", "neighbourhood", "paths")
#: distance value of entities beyond the search cap (or not connected at all)
UNREACHED = 255
#: largest ``hops`` / ``max_path_length``: distances up to ``cap - 1`` must fit below ``UNREACHED``
MAX_RADIUS = UNREACHED


def check_radius(name: str, value: object) -> int:
    """``value`` if it is a valid ``hops`` / ``max_path_length`` (an integer from 1 to :data:`MAX_RADIUS`).

    Raises:
        ValueError: naming ``name``, otherwise.

    Example:
        >>> check_radius("hops", 2)
        2
        >>> check_radius("hops", 0)
        Traceback (most recent call last):
        ...
        ValueError: hops must be an integer from 1 to 255, got 0
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RADIUS:
        raise ValueError(f"{name} must be an integer from 1 to {MAX_RADIUS}, got {value!r}")
    return value


#: elements per expansion step of the search (bounds its temporary memory to a few hundred MB)
_BUDGET = 1 << 23


def undirected_adjacency(triples: Tensor, num_entities: int) -> tuple[Tensor, Tensor]:
    """CSR neighbour lists of the undirected multigraph of ``(N, 3)`` triples.

    Returns:
        ``rowptr`` ``(num_entities + 1,)`` int64 and ``col`` ``(2N,)`` (int32 when the ids fit): the
        neighbours of entity ``e`` are ``col[rowptr[e]:rowptr[e + 1]]`` (with repeats for parallel
        edges; a self-loop lists ``e`` twice).
    """
    heads, tails = triples[:, 0].long(), triples[:, 2].long()
    source = torch.cat([heads, tails])
    target = torch.cat([tails, heads])
    order = torch.argsort(source, stable=True)
    index_dtype = torch.int32 if num_entities < 2**31 else torch.int64
    col = target[order].to(index_dtype)
    counts = torch.bincount(source, minlength=num_entities)
    rowptr = torch.zeros(num_entities + 1, dtype=torch.long, device=triples.device)
    rowptr[1:] = torch.cumsum(counts, 0)
    return rowptr, col


def _chunks(degrees: Tensor, budget: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` frontier slices whose degrees sum to about ``budget`` (one node may exceed it)."""
    ends = torch.cumsum(degrees, 0)
    total = int(ends[-1]) if ends.numel() else 0
    if total <= budget:
        yield 0, degrees.numel()
        return
    starts = ends - degrees
    cuts = torch.searchsorted(starts, torch.arange(0, total, budget, device=degrees.device)).tolist()
    cuts = sorted(set(cuts) | {degrees.numel()})
    for start, stop in itertools.pairwise(cuts):
        if stop > start:
            yield start, stop


def _expand(rowptr: Tensor, col: Tensor, nodes: Tensor) -> tuple[Tensor, Tensor]:
    """``(which frontier entry, neighbour)`` for every neighbour of every node in ``nodes``."""
    starts = rowptr[nodes]
    degrees = rowptr[nodes + 1] - starts
    total = int(degrees.sum())
    entry = torch.repeat_interleave(
        torch.arange(nodes.numel(), device=nodes.device), degrees, output_size=total
    )
    first = torch.cumsum(degrees, 0) - degrees  # position of each entry's first neighbour in the output
    position = torch.arange(total, device=nodes.device) - first[entry] + starts[entry]
    return entry, col[position].long()


def bfs_distances(
    rowptr: Tensor,
    col: Tensor,
    sources: Tensor,
    max_depth: int,
    *,
    blocked: Tensor | None = None,
    budget: int = _BUDGET,
) -> Tensor:
    """Breadth-first distances from each of ``S`` sources, capped at ``max_depth``.

    Args:
        rowptr: CSR row pointers from :func:`undirected_adjacency`.
        col: CSR neighbour ids.
        sources: ``(S,)`` entity ids, one search each (all searches run together).
        max_depth: largest distance computed (``< UNREACHED``); farther entities stay ``UNREACHED``.
        blocked: ``(S,)`` entity per source whose direct edges from the source are ignored (the
            other endpoint of a test triple); None ignores none.
        budget: neighbour entries expanded at once (bounds temporary memory).

    Returns:
        ``(S, num_entities)`` uint8 distances; ``UNREACHED`` beyond ``max_depth`` or disconnected.
    """
    if not 0 <= max_depth < UNREACHED:
        raise ValueError(f"max_depth must be in 0..{UNREACHED - 1}, got {max_depth}")
    device = sources.device
    num_entities = rowptr.numel() - 1
    count = sources.numel()
    dist = torch.full((count * num_entities,), UNREACHED, dtype=torch.uint8, device=device)
    origin = torch.arange(count, device=device)
    keys = origin * num_entities + sources.long()  # (source, entity) flattened
    dist[keys] = 0
    for depth in range(1, max_depth + 1):
        if keys.numel() == 0:
            break
        which, nodes = keys // num_entities, keys % num_entities
        degrees = rowptr[nodes + 1] - rowptr[nodes]
        found = []
        for start, stop in _chunks(degrees, budget):
            entry, neighbour = _expand(rowptr, col, nodes[start:stop])
            origin_of = which[start:stop][entry]
            if depth == 1 and blocked is not None:
                keep = neighbour != blocked.long()[origin_of]
                origin_of, neighbour = origin_of[keep], neighbour[keep]
            new = origin_of * num_entities + neighbour
            new = torch.unique(new[dist[new] == UNREACHED])
            dist[new] = depth
            found.append(new)
        keys = torch.cat(found) if found else keys[:0]
    return dist.view(count, num_entities)


@dataclass(frozen=True)
class CandidateFilter:
    """Per-test-triple distance arrays and the rule that turns them into candidate masks.

    Build it with :func:`build_filter`. ``distances`` holds ``(min(d_h, d_t),)`` in ``neighbourhood``
    mode and ``(d_h, d_t)`` in ``paths`` mode, each ``(T, num_entities)`` uint8.

    Example:
        >>> train = torch.tensor([[0, 0, 1], [1, 0, 2], [2, 0, 3], [3, 0, 4]])
        >>> f = build_filter(train, torch.tensor([[0, 0, 2]]), num_entities=5, mode="neighbourhood", hops=1)
        >>> f.mask(train).tolist()
        [[True, True, True, False]]
        >>> build_filter(train, torch.tensor([[0, 0, 4]]), num_entities=5, mode="paths",
        ...              max_path_length=3).mask(train).tolist()
        [[False, False, False, False]]
    """

    mode: Literal["neighbourhood", "paths"]
    radius: int  # hops (neighbourhood) or max_path_length (paths)
    test_triples: Tensor
    distances: tuple[Tensor, ...]

    @property
    def num_test(self) -> int:
        """Number of test triples ``T``."""
        return int(self.test_triples.shape[0])

    @property
    def device(self) -> torch.device:
        """Where the distance arrays live."""
        return self.distances[0].device

    def options(self) -> dict[str, int | str]:
        """The options that define this filter (for run records and resume fingerprints)."""
        key = "hops" if self.mode == "neighbourhood" else "max_path_length"
        return {"mode": self.mode, key: self.radius}

    def to(self, device: torch.device | str) -> CandidateFilter:
        """This filter with its arrays on ``device``."""
        return CandidateFilter(
            self.mode, self.radius, self.test_triples.to(device), tuple(d.to(device) for d in self.distances)
        )

    def mask(self, triples: Tensor) -> Tensor:
        """``(T, B)`` bool: is row ``b`` of ``triples`` ``(B, 3)`` a candidate for test triple ``t``?"""
        heads = triples[:, 0].to(self.device, torch.long)
        tails = triples[:, 2].to(self.device, torch.long)
        if self.mode == "neighbourhood":
            (near,) = self.distances
            closest = torch.minimum(near.index_select(1, heads), near.index_select(1, tails))
            return closest.to(torch.int16) <= self.radius - 1
        from_head, from_tail = self.distances
        forward = from_head.index_select(1, heads).to(torch.int16) + from_tail.index_select(1, tails)
        backward = from_head.index_select(1, tails).to(torch.int16) + from_tail.index_select(1, heads)
        return torch.minimum(forward, backward) + 1 <= self.radius


def build_filter(
    train: Tensor,
    test: Tensor,
    *,
    num_entities: int,
    mode: str,
    hops: int = 1,
    max_path_length: int = 3,
    budget: int = _BUDGET,
) -> CandidateFilter:
    """The candidate filter of ``test`` ``(T, 3)`` over the graph of ``train`` ``(N, 3)``.

    Computed on ``train``'s device. See the module docstring for the exact rules.

    Args:
        train: training triples (ids).
        test: test triples (ids).
        num_entities: entity count (ids ``0 .. num_entities - 1``).
        mode: ``neighbourhood`` or ``paths`` (``all`` means no filter: do not call this).
        hops: neighbourhood radius ``n >= 1``.
        max_path_length: path length ``L >= 1``.
        budget: neighbour entries expanded at once by the search.

    Raises:
        ValueError: for an unknown mode or a radius out of range.
    """
    if mode == "neighbourhood":
        radius = hops
    elif mode == "paths":
        radius = max_path_length
    else:
        raise ValueError(f"mode must be 'neighbourhood' or 'paths' to build a filter, got {mode!r}")
    check_radius("hops" if mode == "neighbourhood" else "max_path_length", radius)
    device = train.device
    test = test.to(device, torch.long)
    rowptr, col = undirected_adjacency(train, num_entities)
    heads, tails = test[:, 0], test[:, 2]
    sources = torch.cat([heads, tails])
    blocked = torch.cat([tails, heads])  # paths: ignore the direct h - t edges (see the module docstring)
    dist = bfs_distances(rowptr, col, sources, radius - 1, blocked=blocked, budget=budget)
    del rowptr, col
    from_head, from_tail = dist[: test.shape[0]], dist[test.shape[0] :]
    if mode == "neighbourhood":
        return CandidateFilter("neighbourhood", radius, test, (torch.minimum(from_head, from_tail),))
    return CandidateFilter("paths", radius, test, (from_head.clone(), from_tail.clone()))


def count_candidates(
    filter: CandidateFilter, train: Tensor, *, budget: int = _BUDGET
) -> tuple[Tensor, Tensor]:
    """Candidates per test triple and the union, over all of ``train`` ``(N, 3)``, in chunks.

    Returns:
        ``counts`` ``(T,)`` int64 (candidates of each test triple) and ``rows`` ``(K,)`` int64: the
        sorted row positions in ``train`` of the triples that are a candidate for at least one test
        triple. Both on the filter's device.
    """
    counts = torch.zeros(filter.num_test, dtype=torch.long, device=filter.device)
    kept = []
    step = max(1, budget // max(1, filter.num_test))
    for start in range(0, train.shape[0], step):
        mask = filter.mask(train[start : start + step])
        counts += mask.sum(1)
        kept.append(torch.nonzero(mask.any(0)).squeeze(1) + start)
    rows = torch.cat(kept) if kept else torch.empty(0, dtype=torch.long, device=filter.device)
    return counts, rows
