"""Raw image pairs -> Parquet shards, as a Ray Data job (see pix2pix.training.pairs for the layouts)."""

from __future__ import annotations

import json
import posixpath
from dataclasses import asdict

import pyarrow as pa
import ray
from ray.data.expressions import col

from pix2pix import demo_paths, storage
from pix2pix.errors import JobError
from pix2pix.images import DEFAULT_MAX_PIXELS, BadImage
from pix2pix.training.pairs import PairSpec, Skipped, decode_pair, discover_pairs
from pix2pix.training.shards import DATASET_INFO_FILE, SHARD_SCHEMA


class PrepareError(JobError):
    """The input cannot be prepared at all (nothing there, no pairs)."""


ROW_SCHEMA = SHARD_SCHEMA.append(pa.field("split", pa.string())).append(pa.field("error", pa.string()))


def load_pairs(batch: pa.Table, root: storage.Location, max_pixels: int = DEFAULT_MAX_PIXELS) -> pa.Table:
    """map_batches function: read each pair's files, check they decode, build shard rows
    (bad pairs keep their key and get an ``error``)."""
    rows = [load_pair(PairSpec(**fields), root, max_pixels) for fields in batch.to_pylist()]
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def load_pair(spec: PairSpec, root: storage.Location, max_pixels: int) -> dict:
    def read(relative: str | None) -> bytes | None:
        return None if relative is None else storage.read_bytes(root.filesystem, posixpath.join(root.path, relative))

    row = {"key": spec.key, "layout": spec.layout, "split": spec.split, "source_side": spec.source_side,
           "image": None, "source": None, "target": None, "error": None}
    try:
        row.update(image=read(spec.image_path), source=read(spec.source_path), target=read(spec.target_path))
        decode_pair(row, max_pixels)
    except (BadImage, OSError) as error:
        row.update(image=None, source=None, target=None, error=storage.redact(str(error)))
    return row


def check_locations(input_uri: str, output_uri: str) -> tuple[storage.Location, storage.Location]:
    """Resolve both URIs; a clear error when the input is not there (cheap: no Ray needed)."""
    source, output = storage.resolve(input_uri), storage.resolve(output_uri)
    if not storage.is_dir(source):
        raise PrepareError(f"input not found or not a folder: {input_uri}")
    return source, output


def prepare(
    input_uri: str,
    output_uri: str,
    layout: str = "auto",
    source_dir: str = "sat",
    target_dir: str = "map",
    direction: str = "AtoB",
    val_fraction: float = 0.1,
    rows_per_shard: int = 256,
) -> dict:
    """Write ``output/<split>/*.parquet`` and ``output/_dataset.json``; return the summary."""
    source, output = check_locations(input_uri, output_uri)
    relative = sorted(posixpath.relpath(path, source.path) for path in storage.list_files(source))
    if not relative:
        raise PrepareError(f"no files under {input_uri}")
    specs, skipped = discover_pairs(relative, layout, source_dir, target_dir, direction, val_fraction)
    if not specs:
        reasons = "; ".join(sorted({entry.reason for entry in skipped}))[:300]
        raise PrepareError(f"no image pairs found under {input_uri} ({reasons or 'no images'})")

    table = pa.Table.from_pylist([asdict(spec) for spec in specs])
    loaded = (
        ray.data.from_arrow(table)
        .repartition(max(1, len(specs) // 64))
        .map_batches(load_pairs, fn_kwargs={"root": source}, batch_size=32, batch_format="pyarrow")
        .materialize()
    )
    failed = loaded.filter(expr=col("error").is_not_null()).select_columns(["key", "split", "error"]).take_all()
    paths = {(spec.split, spec.key): spec.image_path or spec.source_path for spec in specs}
    skipped += [Skipped(paths[row["split"], row["key"]], row["error"]) for row in failed]

    counts = write_splits(loaded, sorted({spec.split for spec in specs}), output, rows_per_shard)
    info = {"layout": specs[0].layout, "direction": direction, "pairs": counts, "input": input_uri}
    storage.write_text(output.join(DATASET_INFO_FILE), json.dumps(info, indent=2))
    return {
        "pairs": counts,
        "skipped": len(skipped),
        "skipped_files": [{"path": entry.path, "reason": entry.reason} for entry in skipped],
        "output": output_uri,
    }


def write_splits(loaded: ray.data.Dataset, splits: list[str], output: storage.Location,
                 rows_per_shard: int) -> dict[str, int]:
    """Each split's rows of ``loaded`` (ROW_SCHEMA) without an error as shards under OUTPUT/<split>/;
    returns the rows written per split."""
    counts = {}
    for split in splits:
        rows = loaded.filter(expr=(col("split") == split) & col("error").is_null()).select_columns(SHARD_SCHEMA.names)
        counts[split] = rows.count()
        if counts[split]:
            rows.write_parquet(
                output.join(split).path, filesystem=output.filesystem, min_rows_per_file=rows_per_shard,
                mode=ray.data.SaveMode.OVERWRITE,
            )
    return counts


def prepare_demo(pairs: int = 300) -> dict:
    """The embedded demo's pairs generated and prepared (pix2pix.demo_paths' locations)."""
    from pix2pix.demo import generate_demo

    generate_demo(demo_paths.DEMO_ROOT, pairs=pairs)
    return prepare(demo_paths.DEMO_RAW, demo_paths.DEMO_DATA)
