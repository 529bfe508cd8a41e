"""The embedded demo's layout: absolute locations, so jobs find them under any working dir
(``ray job submit --working-dir`` runs a job from a temporary copy of the repository)."""

from __future__ import annotations

import os

DEMO_ROOT = os.path.abspath(os.path.expanduser(os.environ.get("PIX2PIX_DEMO_ROOT", "~/.cache/pix2pix/demo-bucket")))
DEMO_RAW = os.path.join(DEMO_ROOT, "raw")             # generated pairs: sat/*.jpg + map/*.png
DEMO_DATA = os.path.join(DEMO_ROOT, "data")           # prepared shards: train/, val/
DEMO_RUNS = os.path.join(DEMO_ROOT, "runs")           # Ray Train storage path
DEMO_RUN_NAME = "demo"
DEMO_TILES = os.path.join(DEMO_ROOT, "tiles")         # z/x/y satellite tiles (sat/) and their true maps
DEMO_TRANSLATED = os.path.join(DEMO_ROOT, "translated")  # translation output
