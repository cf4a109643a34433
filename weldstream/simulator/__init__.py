"""Deterministic weld-scan simulator: ultrasonic B-scans of PE welds and radiographs of steel welds.

Every scan is a pure function of (domain, seed, size), with a pixel-exact defect mask, so a learner
can stream thousands of labelled scans from named domains that drift the way real rigs do.
"""

from weldstream.simulator.dataset import read_dataset, read_index, write_dataset
from weldstream.simulator.domains import (
    DOMAINS,
    Domain,
    RadiographRig,
    UltrasonicRig,
    domain_names,
    get_domain,
)
from weldstream.simulator.scan import ScanSample, generate_scan

__all__ = [
    "DOMAINS",
    "Domain",
    "RadiographRig",
    "ScanSample",
    "UltrasonicRig",
    "domain_names",
    "generate_scan",
    "get_domain",
    "read_dataset",
    "read_index",
    "write_dataset",
]
