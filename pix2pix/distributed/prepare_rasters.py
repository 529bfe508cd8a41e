"""Georeferenced rasters -> the Parquet shards raw pairs become, as a Ray Data job: one task per
group of chips (pix2pix.tiles.chips plans and cuts them), each reading its own windows.

The shards are those of paired folders: the image chip and the map chip as PNG files, split
into train and val by the hash of each chip's key, so training reads them unchanged.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict

import pyarrow as pa
import ray
from rasterio.errors import RasterioError
from ray.data.expressions import col

from pix2pix import storage
from pix2pix.distributed.prepare import ROW_SCHEMA, write_splits
from pix2pix.images import encode_image
from pix2pix.tiles.chips import Chip, ChipGroup, ChipPlan, cut_chips, group_keys
from pix2pix.tiles.rasters import RasterError
from pix2pix.training.pairs import PAIRED, split_for_key
from pix2pix.training.shards import DATASET_INFO_FILE

MAX_BLOCKS = 1000  # up to here a group is a block: ~16 chips, well under a second of work each
# zlib level 1: a real 256 px aerial chip encodes in 13 ms instead of 46 (level 6) for 22% more
# bytes (68 KB, not 56); the maps are 2-3 KB either way.
CHIP_PNG_LEVEL = 1


def prepare_rasters(plan: ChipPlan, output_uri: str, direction: str = "AtoB", val_fraction: float = 0.1,
                    rows_per_shard: int = 256) -> dict:
    """Write the chips of a plan (pix2pix.tiles.chips.plan_chips: the inputs checked) to
    ``output/<split>/*.parquet`` and ``output/_dataset.json``; return the summary."""
    output = storage.resolve(output_uri)
    loaded = (
        ray.data.from_items([asdict(group) for group in plan.groups],
                            override_num_blocks=min(len(plan.groups), MAX_BLOCKS))
        .map_batches(load_chips, fn_kwargs={"size": plan.size, "stride": plan.stride, "val_fraction": val_fraction,
                                            "direction": direction}, batch_size=1, batch_format="pyarrow")
        .materialize()
    )
    errors = loaded.filter(expr=col("error").is_not_null()).select_columns(["error"]).take_all()
    skipped = Counter(row["error"] for row in errors)
    counts = write_splits(loaded, ["train", "val"] if val_fraction > 0 else ["train"], output, rows_per_shard)
    info = {"layout": PAIRED, "direction": direction, "pairs": counts, "images": plan.images, "labels": plan.labels,
            "image_size": plan.size, "stride": plan.stride}
    storage.write_text(output.join(DATASET_INFO_FILE), json.dumps(info, indent=2))
    return {
        "pairs": counts,
        "chips": plan.chips,
        "skipped": sum(skipped.values()),
        "skipped_chips": dict(skipped),
        "skipped_files": [{"path": path, "reason": reason} for path, reason in plan.skipped_files],
        "output": output_uri,
    }


def load_chips(batch: pa.Table, size: int, stride: int, val_fraction: float, direction: str) -> pa.Table:
    """map_batches function: cut each group's chips into shard rows (a skipped chip, or one whose
    window could not be read, keeps its key and gets an ``error``)."""
    rows = []
    for fields in batch.to_pylist():
        group = ChipGroup(**{**fields, "labels": tuple(fields["labels"])})
        try:
            chips = cut_chips(group, size, stride)
        except (RasterError, RasterioError, OSError) as error:  # e.g. a file changed or gone since the plan
            reason = f"cannot read the windows of {group.image} or its labels: {storage.redact(str(error))}"
            chips = [Chip(key, None, None, reason) for key in group_keys(group, stride)]
        rows += [chip_row(chip, val_fraction, direction) for chip in chips]
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def chip_row(chip: Chip, val_fraction: float, direction: str) -> dict:
    row = {"key": chip.key, "layout": PAIRED, "split": split_for_key(chip.key, val_fraction), "source_side": None,
           "image": None, "source": None, "target": None, "error": chip.skipped}
    if chip.skipped is None:
        image, labels = (encode_image(pixels, "png", png_level=CHIP_PNG_LEVEL) for pixels in (chip.image, chip.labels))
        row["source"], row["target"] = (image, labels) if direction == "AtoB" else (labels, image)
    return row
