"""The defect classes a weld model marks; the class list travels with every model as metadata."""

from __future__ import annotations

DEFECT_CLASSES: tuple[str, ...] = ("background", "crack", "porosity", "lack_of_fusion", "inclusion")
BACKGROUND = 0
