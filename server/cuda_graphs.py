"""CUDA graphs for the forward pass: one graph per input shape the batcher forms, replayed thereafter.

Batches are padded to bucketed sizes (see ``backends.bucket_size``) and scans of the same size recur,
so a handful of (batch, height, width) shapes carry the traffic. A shape is captured the second time it
is seen (the first run is eager, which also warms cuDNN's choice for it); at most ``MAX_GRAPHS``
shapes are kept and any other shape runs eagerly. All graphs share one memory pool: the server runs
one batch at a time and copies each result out before the next replay.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
from torch import Tensor

from weldstream.tiles import PixelMaps, Predictor

MAX_GRAPHS = 32
CAPTURE_AFTER = 2  # sightings of a shape before it is captured
WARM_UP_RUNS = 2  # eager runs on a side stream before capture, as torch.cuda.graphs advises


class GraphCache:
    """Wraps a Predictor with graphs keyed by input shape. ``capture`` is injectable for tests."""

    def __init__(self, predict: Predictor, max_graphs: int = MAX_GRAPHS, capture_after: int = CAPTURE_AFTER,
                 capture: Callable[[Predictor, Tensor], Predictor] | None = None) -> None:
        self._predict = predict
        self._max = max_graphs
        self._after = capture_after
        self._capture = capture or capture_graph
        self._seen: Counter[tuple[int, ...]] = Counter()
        self._graphs: dict[tuple[int, ...], Predictor] = {}

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return list(self._graphs)

    def __call__(self, padded: Tensor) -> tuple[Tensor, ...]:
        shape = tuple(padded.shape)
        graph = self._graphs.get(shape)
        if graph is not None:
            return graph(padded)
        self._seen[shape] += 1
        if self._seen[shape] >= self._after and len(self._graphs) < self._max:
            self._graphs[shape] = graph = self._capture(self._predict, padded)
            return graph(padded)
        return self._predict(padded)


_POOL: tuple[int, int] | None = None


def capture_graph(predict: Predictor, example: Tensor) -> Predictor:
    """Record predict on a static input shaped like ``example``; the returned Predictor copies its input
    in, replays and returns copies of the outputs."""
    global _POOL
    static_input = example.clone()
    side = torch.cuda.Stream(example.device)
    side.wait_stream(torch.cuda.current_stream(example.device))
    with torch.cuda.stream(side):
        for _ in range(WARM_UP_RUNS):
            predict(static_input)
    torch.cuda.current_stream(example.device).wait_stream(side)
    if _POOL is None:
        _POOL = torch.cuda.graph_pool_handle()
    graph = torch.cuda.CUDAGraph()
    # thread_local: the loader thread may copy and warm up the next version on the GPU meanwhile
    with torch.cuda.graph(graph, pool=_POOL, capture_error_mode="thread_local"):
        static = PixelMaps(*predict(static_input))  # classes, confidence, entropy, features

    def replay(padded: Tensor) -> PixelMaps:
        static_input.copy_(padded)
        graph.replay()
        return PixelMaps(*(None if t is None else t.clone() for t in static))

    return replay
