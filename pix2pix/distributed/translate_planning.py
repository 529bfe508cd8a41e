"""The planning stage of the translation pipeline: each input shard listed and cut into units.

Planning runs as Ray tasks, which a small node may start in fresh worker processes: this module
imports only what planning needs (no torch, OpenCV or Pillow)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pix2pix.tiles.plan import PlanSettings, plan_shard
from pix2pix.tiles.rows import Unit, to_table


def plan_shards(batch: dict[str, np.ndarray], input_root, output, settings: PlanSettings, manifest=None,
                tally=None) -> pa.Table:
    """Plan each shard of a batch (rows of "index" and "shard") and report its tile count to
    ``tally``."""
    units: list[Unit] = []
    for index, shard in zip(batch["index"], batch["shard"]):
        planned = plan_shard(shard, input_root, output, settings, manifest)
        if tally is not None:
            tally.add.remote(int(index), sum(planned_tiles(unit) for unit in planned))
        units += planned
    return to_table(units, Unit)


def planned_tiles(unit: Unit) -> int:
    """The tiles a unit will report a status for: failed at planning, skipped or to write."""
    return 1 if unit.reason else unit.skipped + sum(tile.write for tile in unit.tiles)
