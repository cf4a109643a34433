"""The domain-incremental stream: one train and one test split per domain, in the order a learner meets them.

From the simulator, train scans of domain d are seeds ``TRAIN_SEED + i`` and test scans ``TEST_SEED + i``,
so the splits never share a scan and every run sees byte-identical data. From a folder (``--data``),
each scan goes to test when a hash of its scan id falls below ``test_share``: stable across runs and
machines, and independent of file order. The stream is built once by the parent process and saved as
one ``.pt`` file that every strategy's worker loads, so all strategies train on the same tensors.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from weldstream.bench.cl.config import BenchConfig
from weldstream.preprocess import training_pair

TRAIN_SEED = 1_000_000
TEST_SEED = 9_000_000


@dataclass
class DomainSplit:
    """One domain: x (N, 1, H, W) float32 normalised scans, y (N, H, W) uint8 class maps."""

    name: str
    modality: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


@dataclass
class Stream:
    domains: list[DomainSplit]
    source: str  # "simulator" or the folder it was read from

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.domains]

    def describe(self) -> list[dict[str, object]]:
        """Per-domain sizes and defect share, for the report."""
        return [
            {
                "domain": d.name,
                "modality": d.modality,
                "train": len(d.x_train),
                "test": len(d.x_test),
                "defect_pixels_pct": round(100 * float((d.y_train > 0).float().mean()), 2),
            }
            for d in self.domains
        ]

    def save(self, path: Path) -> None:
        torch.save({"source": self.source, "domains": [vars(d) for d in self.domains]}, path)

    @classmethod
    def load(cls, path: Path) -> Stream:
        data = torch.load(path, weights_only=True)
        return cls([DomainSplit(**d) for d in data["domains"]], data["source"])


def build_stream(cfg: BenchConfig) -> Stream:
    """The simulator's domains in canonical order, or a folder dataset when ``cfg.data`` is set."""
    stream = _from_folder(cfg) if cfg.data is not None else _from_simulator(cfg)
    if cfg.max_domains is not None:
        stream.domains = stream.domains[: cfg.max_domains]
    if len(stream.domains) < 2:
        raise ValueError(f"a continual-learning stream needs at least two domains, got {stream.names}")
    return stream


def _stack(pairs: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    return torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])


def _from_simulator(cfg: BenchConfig) -> Stream:
    from weldstream.simulator import domain_names, generate_scan, get_domain

    names = domain_names()
    if cfg.domains is not None:
        unknown = [d for d in cfg.domains if d not in names]
        if unknown:
            raise ValueError(f"unknown simulator domains {unknown}; valid: {names}")
        names = [n for n in names if n in cfg.domains]
    names = names[: cfg.max_domains] if cfg.max_domains else names
    domains = []
    for name in names:
        splits = []
        for base, count in ((TRAIN_SEED, cfg.train_per_domain), (TEST_SEED, cfg.test_per_domain)):
            scans = (generate_scan(name, base + i, cfg.size) for i in range(count))
            splits.append(_stack([training_pair(s.image, s.mask) for s in scans]))
        (x_train, y_train), (x_test, y_test) = splits
        domains.append(DomainSplit(name, get_domain(name).modality, x_train, y_train, x_test, y_test))
    return Stream(domains, "simulator")


def is_test(scan_id: str, share: float) -> bool:
    """Deterministic hold-out by scan id: crc32 spread over [0, 1)."""
    return zlib.crc32(scan_id.encode()) / 2**32 < share


def _index_files(folder: Path) -> list[Path]:
    """index.csv (or index.json) in the folder itself, else one per immediate sub-folder."""
    for name in ("index.csv", "index.json"):
        if (folder / name).is_file():
            return [folder / name]
    found = sorted(p for p in folder.glob("*/index.csv"))
    found += sorted(p for p in folder.glob("*/index.json") if not (p.parent / "index.csv").is_file())
    if not found:
        raise ValueError(f"{folder} holds no index.csv (or index.json), nor do its sub-folders")
    return found


def _from_folder(cfg: BenchConfig) -> Stream:
    from weldstream.datasets import local_folder
    from weldstream.simulator import read_dataset

    assert cfg.data is not None
    by_domain: dict[str, dict[str, list]] = {}
    modality: dict[str, str] = {}
    for index in _index_files(local_folder(cfg.data)):
        for row, image, mask in read_dataset(index):
            domain = str(row.get("domain") or "")
            if not domain:
                raise ValueError(f"{index}: every row needs a 'domain' value (scan {row.get('scan_id')!r})")
            split = "test" if is_test(str(row["scan_id"]), cfg.test_share) else "train"
            by_domain.setdefault(domain, {"train": [], "test": []})[split].append(training_pair(image, mask, cfg.size))
            modality.setdefault(domain, str(row.get("modality", "")))
    domains = []
    for name in _canonical_order(list(by_domain)):
        train, test = by_domain[name]["train"], by_domain[name]["test"]
        if not train or not test:
            raise ValueError(f"domain {name!r} has {len(train)} train and {len(test)} test scans; both must be > 0")
        domains.append(DomainSplit(name, modality[name], *_stack(train), *_stack(test)))
    return Stream(domains, str(cfg.data))


def _canonical_order(names: list[str]) -> list[str]:
    """Known simulator domains in canonical order first, then the rest in first-seen order."""
    from weldstream.simulator import domain_names

    canonical = [n for n in domain_names() if n in names]
    return canonical + [n for n in names if n not in canonical]
