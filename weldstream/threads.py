"""Element-wise work on one CPU thread.

torch splits any element-wise op over more than 32k elements across its intra-op threads. On a few
cores shared with other work, the threads of such a short op mostly wait for each other: windowing a
512 x 512 scan took 50 ms on two threads of a loaded 2-core machine and 5 ms on one. The work around
the model's forward (windowing, padding, argmax, copies) therefore runs inside ``one_thread()``, and
the forward keeps every thread.

With OpenMP, the count that an op's parallel region uses belongs to the calling thread, so this only
changes the caller's own ops; each caller saves and restores its own count. (torch also keeps the last
count set as the starting count of threads that have not run a torch op yet.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_thread() -> Iterator[None]:
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
