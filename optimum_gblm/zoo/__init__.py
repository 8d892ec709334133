"""Model-zoo publishing: manifest -> prune, evaluate, save, push every entry -> collection and MODEL_ZOO.md."""

from .manifest import ZooEntry, ZooManifest, load_manifest
from .publish import ZooEntryResult, ZooResult, publish_zoo
from .table import render_zoo_table

__all__ = [
    "ZooEntry",
    "ZooEntryResult",
    "ZooManifest",
    "ZooResult",
    "load_manifest",
    "publish_zoo",
    "render_zoo_table",
]
