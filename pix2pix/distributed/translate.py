"""Batch translation as a Ray Data streaming pipeline, bucket to bucket.

    shards -> plan (list input + output, skip done) -> read + decode (CPU actors)
    -> generator (actor pool, GPU or CPU) -> encode + write (CPU actors) -> status rows

The stages are in translate_stages; this module checks a run, sizes the actor pool, builds
the pipeline, tallies the status rows and writes the failed ones to OUTPUT/_failures/.
Raster input (pix2pix.tiles.rasters) is planned from the rasters' footprints on the driver,
and its windows are warped from them in the read stage.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import posixpath
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import torch
from ray.data import ExecutionResources

from pix2pix import checkpoint, storage
from pix2pix.distributed import capacity
from pix2pix.distributed.translate_planning import plan_shards
from pix2pix.distributed.translate_progress import TranslateProgress
from pix2pix.distributed.translate_stages import GeneratorStage, ReadStage, WriteStage
from pix2pix.errors import JobError
from pix2pix.model.networks import MAX_IMAGE_SIZE, check_image_size
from pix2pix.model.precision import inference_precision
from pix2pix.palette_files import output_palette
from pix2pix.tiles import rasters
from pix2pix.tiles.canvases import context_margin
from pix2pix.tiles.plan import (
    BLOCK_TILES,
    ManifestShard,
    PlanSettings,
    Shard,
    bbox_shards,
    bbox_tile_range,
    discover_shards,
    footprint_columns,
    manifest_context_shards,
    manifest_parts,
    raster_shards,
    read_manifest_part,
    selected_tile_count,
)
from pix2pix.tiles.preview import PreviewSamples, input_tiles, write_preview
from pix2pix.tiles.rows import UNIT_SCHEMA
from pix2pix.tiles.tileset import TILEJSON_FILE, TileSetError, scan, tilejson, xyz_template
from pix2pix.tiles.translator import default_micro_batch
from pix2pix.tiles.xyz import MAX_ZOOM

FAILURES_DIR = "_failures"
IO_CPUS = 0.5  # per read or write actor: they wait on storage much of the time
# CPU ms per tile in the read and write actors, measured with the model's cost taken out
# (bench/README.md, "The GPU ceiling" and "Reading rasters"; 2-vCPU EPYC): reading + decoding a
# JPEG tile, warping a tile's window from COGs, encoding a paletted PNG + writing it. Next to a
# GPU, each pool gets the share of the spare CPUs its work takes per tile.
READ_MS = {"tiles": 0.8, "rasters": 12.2}
WRITE_MS = 1.2
# Per planning task: listing. Planning runs alone, before the pipeline (see build_pipeline), a
# task per CPU on the workers Ray has started: at a quarter of a CPU each, Ray started a new worker
# for each task beyond the CPUs, which cost a 3,024-tile run 2.7 s more before its first tile.
PLAN_CPUS = 1.0
# Tiles per block between the stages, whatever the generator's call: each block costs every
# stage a task, a round trip through the object store and the driver's bookkeeping (~100 ms of
# CPU over all processes, measured at 8 tiles a block), which at 8 tiles a block was most of the
# CPU the pipeline spent around the model (bench/README.md, GPU ceiling). 64 tiles are ~12 MB of
# canvases.
BLOCK_UNITS = 64
MIN_QUEUED_BYTES = 256 * 2**20
MAX_TILES = 1_000_000  # a raster plan above this needs --max-tiles: a zoom too fine by 2 is 16x the tiles

FAILURE_SCHEMA = pa.schema([("key", pa.string()), ("reason", pa.string())])


class TranslateError(JobError):
    """The run cannot start: missing input, bad manifest, unusable checkpoint or sizes."""


@dataclass
class TranslateOptions:
    input: str
    output: str
    checkpoint: str
    manifest: str | None = None
    bbox: tuple[float, float, float, float] | None = None
    zoom: int | None = None
    image_format: str = "png"
    image_size: int | None = None       # None: the checkpoint's
    on_size: str = "resize"
    context: int = 0                    # pixels of neighbour context; 0: tiles alone
    stochastic: bool = False
    seed: int = 0
    palette: str | None = None          # "recife" or a JSON file: outputs snapped to its colours
    no_palette: bool = False            # do not snap to the export's palette
    precision: str = "auto"
    threads: int | None = None          # torch threads per actor; None: 1 on CPU, 2 on GPU
    batch_size: int | None = None       # tiles per actor call; None: 8 on CPU, 64 on GPU
    min_actors: int | None = None
    max_actors: int | None = None
    gpu: bool | None = None             # None: GPU when the cluster has one
    overwrite: bool = False
    preview: str | None = None
    verbose: bool = False               # Ray Data's own progress bars and logs
    max_tiles: int = MAX_TILES          # raster input: the most tiles a run may plan



# ---- the driver ------------------------------------------------------------------------------

@dataclass(frozen=True)
class TranslateResources:
    device: str
    threads: int
    actor_cpus: float
    min_actors: int
    max_actors: int
    read_actors: int  # the most read actors
    write_actors: int  # the most write actors


def plan_translate_resources(options: TranslateOptions, rasters: bool = False) -> TranslateResources:
    """GPU actors: one GPU each, and all remaining CPUs for reading and writing (next to a GPU
    they are the bottleneck), shared by the two in proportion to their measured CPU per tile
    (``READ_MS``: warping from ``rasters`` costs ~15x reading tiles). CPU actors: one torch
    thread each by default, one actor per CPU: two single-threaded actors beat one two-threaded
    actor (bench/README.md, Translation), since decode/encode on the same cores stall a
    multi-threaded generator's OpenMP barriers.
    Their CPU reservation is smaller than their threads, so read/write actors fit beside them."""
    cluster = ray.cluster_resources()
    cpus, gpus = cluster.get("CPU", 1), int(cluster.get("GPU", 0))
    use_gpu = gpus > 0 if options.gpu is None else options.gpu
    threads = options.threads or (2 if use_gpu else 1)
    low = options.min_actors or 1
    if use_gpu:
        # An autoscaling cluster may have no GPU node yet: the pool's actors then wait for the
        # nodes they ask for, so --gpu plans --max-actors (default: the GPUs present, at least 1).
        high = max(options.max_actors or max(gpus, 1), low)
        actor_cpus = 1.0
        spare = cpus - min(high, gpus) * actor_cpus - IO_CPUS
        read_ms = READ_MS["rasters" if rasters else "tiles"]
        read_share = read_ms / (read_ms + WRITE_MS)
        # Every spare CPU, and at least two write actors per GPU actor and the read actors that
        # keep up with them, even when the CPUs are not there yet (the autoscaler adds CPU nodes).
        write_actors = max(int(spare * (1 - read_share) / IO_CPUS), 2 * high)
        read_actors = max(int(spare * read_share / IO_CPUS), math.ceil(2 * high * read_ms / WRITE_MS))
    else:
        high = max(options.max_actors or max(1, int(cpus // threads)), low)
        # PNG encoding is ~1/6 of a CPU generator's work, and a raster window's warp ~1/10 (12 ms
        # against ~130 ms of CPU per tile for the compact model: bench/README.md, "Reading rasters").
        read_actors = write_actors = max(1, math.ceil(high / 4))
        # Leave room for the read and write actors and one planning task.
        actor_cpus = min(float(threads), max(0.1, (cpus - (read_actors + write_actors + 1) * IO_CPUS) / high))
    return TranslateResources("cuda" if use_gpu else "cpu", threads, round(actor_cpus, 2), low, high, read_actors,
                              write_actors)


@dataclass(frozen=True)
class Run:
    """What is checked before Ray starts, so that mistakes end in one line, early."""

    input_root: storage.Location
    output: storage.Location
    export_uri: str
    image_size: int
    margin: int
    settings: PlanSettings
    manifest: storage.Location | None = None
    manifest_parts: list | None = None
    palette: dict | None = None
    trained_precision: str | None = None
    raster: RasterPlan | None = None


@dataclass(frozen=True)
class RasterPlan:
    """Raster input: the checked rasters (priority order), the zoom, the footprint's columns
    (x -> y ranges) and the --bbox selection [x0, x1, y0, y1] (None: all)."""

    sources: list[rasters.Source]
    zoom: int
    columns: dict
    selection: list[int] | None
    tiles: int


def check_run(options: TranslateOptions) -> Run:
    input_root, output = storage.resolve(options.input), storage.resolve(options.output)
    uris = rasters.find_rasters(options.input)
    _check_locations(input_root, output, options, uris is not None)
    manifest = storage.resolve(options.manifest) if options.manifest else None
    parts = manifest_parts(manifest) if manifest else None
    export = checkpoint.find_export(options.checkpoint)
    _, info = checkpoint.load_generator(export.uri)  # fail here, in one line, not in every actor
    palette = output_palette(options.palette, options.no_palette, options.image_format, info.palette)
    image_size = options.image_size or info.image_size
    if image_size > MAX_IMAGE_SIZE:
        raise TranslateError(f"--image-size must be at most {MAX_IMAGE_SIZE}, got {image_size}")
    try:
        check_image_size(image_size, info.generator.depth)
    except ValueError as error:
        raise TranslateError(f"--image-size: {error}") from None
    margin = context_margin(options.context, image_size, info.generator.depth)
    settings = PlanSettings(image_format=options.image_format, margin=margin, overwrite=options.overwrite)
    raster = plan_rasters(uris, options, image_size) if uris is not None else None
    return Run(input_root, output, export.uri, image_size, margin, settings, manifest, parts, palette, info.precision,
               raster)


def plan_rasters(uris: list[str], options: TranslateOptions, image_size: int) -> RasterPlan:
    """Check the rasters, choose the zoom (said on stderr) and count the tiles to plan."""
    sources = rasters.open_sources(uris)
    zoom = options.zoom if options.zoom is not None else rasters.default_zoom(sources, image_size, MAX_ZOOM)
    latitude = (min(s.lonlat[1] for s in sources) + max(s.lonlat[3] for s in sources)) / 2
    finest = min(s.resolution for s in sources) * math.cos(math.radians(latitude))
    print(f"translate: zoom {zoom}{'' if options.zoom is not None else ' (default)'}: "
          f"{rasters.ground_resolution(zoom, image_size, latitude):.2f} m per pixel on the ground at latitude "
          f"{latitude:.2f} (the finest raster: {finest:.2f} m)", file=sys.stderr, flush=True)
    columns = footprint_columns([source.lonlat for source in sources], zoom)
    selection = None
    if options.bbox:
        tile_range = bbox_tile_range(options.bbox, zoom)
        selection = list(tile_range) if tile_range else [1, 0, 1, 0]  # nothing
    tiles = selected_tile_count(columns, selection)
    if tiles > options.max_tiles:
        raise TranslateError(f"zoom {zoom} plans {tiles} tiles over the rasters, more than --max-tiles "
                             f"{options.max_tiles}: give a lower --zoom, a --bbox, or --max-tiles {tiles}")
    return RasterPlan(sources, zoom, columns, selection, tiles)


@dataclass
class Pipeline:
    """The Ray Data pipeline of a run and the choices it was built with."""

    statuses: ray.data.Dataset  # one status row per unit, once written (or failed, or skipped)
    resources: TranslateResources
    precision: str
    units_per_call: int
    progress: TranslateProgress  # its counts: tallied as the statuses arrive; the planning tasks report "planned"


@dataclass
class Outcome:
    counts: defaultdict
    failures_uri: str | None
    first: tuple[float, int] | None  # (time, written) when the first tiles were written: the end of start-up
    finished: float


def translate(options: TranslateOptions, run: Run | None = None) -> dict:
    started, started_wall = time.monotonic(), time.time()
    run = run or check_run(options)
    # What was written before now is done; what this run writes never changes its own plan.
    run = dataclasses.replace(run, settings=dataclasses.replace(run.settings, written_before_ns=time.time_ns()))
    # Planned from the nodes present: on an autoscaling cluster, once there is one to plan from.
    capacity.wait_for_node({"CPU": 1.0, **({"GPU": 1.0} if options.gpu else {})}, "a generator actor",
                           "translate on CPUs with --cpu" if options.gpu else "give the cluster a node with CPUs")
    shards = _shards(options, run)
    samples = PreviewSamples()
    with TranslateProgress(len(shards), defaultdict(int)) as progress:  # from the planning on
        pipeline = build_pipeline(options, run, shards, progress)
        outcome = run_pipeline(pipeline, run, samples)
    if outcome.counts["written"] or outcome.counts["skipped"]:
        tiles_json, template = write_tilejson(run)
    else:
        tiles_json, template = None, None
    if options.preview:
        preview(options.preview, run, samples, options.image_format)
    planned_at = pipeline.progress.planned_at
    planning_s = round(planned_at - started_wall, 2) if planned_at else None
    return summarise(options, run, pipeline, outcome, started, tiles_json, template) | {"planning_s": planning_s}


def build_pipeline(options: TranslateOptions, run: Run, shards: list[Shard], progress: TranslateProgress) -> Pipeline:
    resources = plan_translate_resources(options, rasters=run.raster is not None)
    # A GPU cluster's driver may have no GPU: then each actor resolves "auto" on its own GPU.
    local = resources.device == "cpu" or torch.cuda.is_available()
    precision = inference_precision(options.precision, resources.device, run.trained_precision) if local \
        else options.precision
    micro_batch = 1 if run.margin else default_micro_batch(resources.device)
    batch_size = options.batch_size or (64 if resources.device == "cuda" else 8)
    # Whole micro-batches per call: a partial one is padded, which costs time, never bytes.
    units_per_call = 1 if run.margin else -(-batch_size // micro_batch) * micro_batch
    # A context block is already BLOCK_TILES^2 tiles.
    units_per_block = 1 if run.margin else max(BLOCK_UNITS, units_per_call)
    canvas_bytes = 3 * (run.image_size * (BLOCK_TILES if run.margin else 1) + 2 * run.margin) ** 2
    read_kwargs = {"input_root": run.input_root, "image_size": run.image_size, "on_size": options.on_size}
    if run.raster:
        read_kwargs["rasters"] = True

    planning = _planned_units(shards, run, progress.tally)
    # The dataset's own copy of the DataContext: settings for this run only. Ray Data's own
    # progress bars and resource lines only with --verbose: ours is one line.
    planning.context.enable_progress_bars = options.verbose
    # Alone, planning may take every CPU: with Ray Data's per-operator reservation its tasks ran
    # one at a time (620 of them, 16.6 s of an 18,144-tile run before its first tile).
    reservation = planning.context.op_resource_reservation_enabled
    planning.context.op_resource_reservation_enabled = False
    # Every shard planned before the first tile is read: streamed, planning ran only as fast as
    # the generator took tiles (Ray Data holds back an operator whose output waits), so an
    # 18,144-tile run knew its total at 0.74-0.79 of the run, with no ETA before; alone it has
    # the CPUs to itself for a few seconds. The units are small (~200 bytes a tile, estimated).
    units = planning.materialize()  # with a copy of planning's context, which the stages below inherit
    units.context.op_resource_reservation_enabled = reservation  # the stages share the CPUs
    # Bound what may wait between stages (Ray Data's default budget is a share of the whole
    # object store): memory then stays flat however many tiles a run has.
    units.context.execution_options.resource_limits = ExecutionResources(
        object_store_memory=max(MIN_QUEUED_BYTES, 16 * resources.max_actors * units_per_block * canvas_bytes))
    # By default a task's outputs are merged into blocks of up to 128 MiB, so a whole shard of
    # decoded tiles would travel (and wait) as one block.
    units.context.target_max_block_size = units_per_block * canvas_bytes
    statuses = (
        units.map_batches(ReadStage, batch_size=units_per_block, batch_format="pyarrow", num_cpus=IO_CPUS,
                          compute=ray.data.ActorPoolStrategy(min_size=1, max_size=resources.read_actors),
                          fn_constructor_kwargs=read_kwargs)
        .map_batches(
            GeneratorStage, batch_size=units_per_call, batch_format="pyarrow",
            fn_constructor_kwargs={
                "checkpoint_uri": run.export_uri, "device": resources.device, "precision": precision,
                "threads": resources.threads,
                "micro_batch": micro_batch,
                "stochastic": options.stochastic, "seed": options.seed, "palette": run.palette,
            },
            compute=ray.data.ActorPoolStrategy(min_size=resources.min_actors, max_size=resources.max_actors),
            num_cpus=resources.actor_cpus, num_gpus=1 if resources.device == "cuda" else 0,
        )
        .map_batches(WriteStage, batch_size=units_per_block, batch_format="pyarrow", num_cpus=IO_CPUS,
                     compute=ray.data.ActorPoolStrategy(min_size=1, max_size=resources.write_actors),
                     fn_constructor_kwargs={
                         "output": run.output, "image_format": options.image_format, "image_size": run.image_size,
                         "palette": run.palette})
    )
    return Pipeline(statuses, resources, precision, units_per_call, progress)


def run_pipeline(pipeline: Pipeline, run: Run, samples: PreviewSamples) -> Outcome:
    """Stream the statuses through: counts, the failure records, the preview's samples."""
    counts, first = pipeline.progress.counts, None
    with FailureLog(run.output) as failures:
        for batch in pipeline.statuses.iter_batches(batch_size=None, batch_format="pyarrow"):
            _tally(batch, counts, failures, samples)
            if first is None and counts["written"]:
                first = (time.monotonic(), counts["written"])
    return Outcome(counts, failures.uri, first, time.monotonic())


def summarise(options: TranslateOptions, run: Run, pipeline: Pipeline, outcome: Outcome, started: float,
              tiles_json: str | None, template: str | None) -> dict:
    """The job's JSON summary."""
    counts, first, finished, resources = outcome.counts, outcome.first, outcome.finished, pipeline.resources
    seconds = time.monotonic() - started
    tiles = counts["written"] + counts["skipped"] + counts["failed"] + counts["empty"]
    steady = (counts["written"] - first[1]) / (finished - first[0]) if first and finished > first[0] else None
    return {
        "tiles": tiles, "written": counts["written"], "skipped": counts["skipped"], "failed": counts["failed"],
        "seconds": round(seconds, 2), "tiles_per_s": round(counts["written"] / seconds, 3) if seconds else 0.0,
        "failed_fraction": round(counts["failed"] / tiles, 6) if tiles else 0.0,
        "failures": outcome.failures_uri, "output": options.output, "device": resources.device,
        "precision": pipeline.precision,
        "actors": [resources.min_actors, resources.max_actors], "threads": resources.threads,
        "context_pixels": run.margin, "batch_size": pipeline.units_per_call,
        "palette": list(run.palette) if run.palette else None,
        "startup_s": round(first[0] - started, 2) if first else None,
        "steady_tiles_per_s": round(steady, 3) if steady else None,
        "read_ratio": round(counts["bytes_read"] / counts["tile_bytes"], 3) if counts["tile_bytes"] else None,
        "preview": options.preview,
        "tilejson": tiles_json, "xyz": template,
    } | ({"empty": counts["empty"], "zoom": run.raster.zoom, "rasters": len(run.raster.sources)} if run.raster
         else {})


def write_tilejson(run: Run) -> tuple[str | None, str | None]:
    """OUTPUT/tiles.json for XYZ outputs (QGIS, MapLibre and jobs/view.py open it), from a
    listing of the output, so a resumed run's earlier tiles count. Other layouts: none. A
    failure here (a full disk, a denied write) is a warning: the tiles are written."""
    location = run.output.join(TILEJSON_FILE)
    try:
        tiles = scan(run.output)
        template = xyz_template(run.output, tiles.extension)
        storage.write_text(location, json.dumps(tilejson(tiles, template, run.palette), indent=1))
    except TileSetError:
        return None, None
    except OSError as error:
        print(storage.redact(f"warning: could not write {location.uri}: {error}"), file=sys.stderr, flush=True)
        return None, None
    return location.uri, template


def preview(uri: str, run: Run, samples: PreviewSamples, image_format: str) -> None:
    """--preview, a side concern: a preview that cannot be written is a warning, not a failure."""
    if run.raster:
        load_source = functools.partial(rasters.read_tile, run.raster.sources, size=run.image_size)
    else:
        load_source = input_tiles(run.input_root, run.image_size)
    try:
        if not write_preview(uri, load_source, run.output, samples, image_format, run.image_size):
            print("warning: no translated tile to show in --preview", file=sys.stderr, flush=True)
    except OSError as error:
        print(storage.redact(f"warning: could not write --preview {uri}: {error}"), file=sys.stderr, flush=True)


def _check_locations(input_root, output, options: TranslateOptions, raster_input: bool) -> None:
    if raster_input:
        if options.manifest:
            raise TranslateError(f"--manifest lists XYZ tiles to read; {options.input} is raster input: "
                                 "choose its area with --bbox")
    else:
        if not options.manifest and not storage.is_dir(input_root):
            raise TranslateError(f"input not found or not a folder: {options.input}")
        if (options.bbox is None) != (options.zoom is None):
            raise TranslateError("with XYZ tile input, --bbox and --zoom go together")
    if type(input_root.filesystem) is type(output.filesystem) and (
            output.path == input_root.path or output.path.startswith(input_root.path.rstrip("/") + "/")):
        raise TranslateError("--output must not be the input or inside it (outputs would be listed as inputs)")
    if output.is_local:
        _check_writable(output, options.output)


def _check_writable(output: storage.Location, uri: str) -> None:
    """A local output that cannot be written (read-only mount, permissions) ends the run here,
    not after every tile has been read, translated and failed to write."""
    try:
        os.makedirs(output.path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output.path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise TranslateError(f"cannot write to --output {uri}: {error.strerror or error}") from None


def _shards(options, run: Run) -> list[Shard]:
    settings = run.settings
    if run.raster:
        plan = run.raster
        return raster_shards(plan.sources, plan.columns, plan.zoom, plan.selection, settings)
    if run.manifest_parts and settings.margin == 0:
        return [ManifestShard(part) for part in run.manifest_parts]
    if run.manifest_parts:
        keys = (key for part in run.manifest_parts for key in read_manifest_part(run.manifest.filesystem, *part))
        return manifest_context_shards(keys, settings)
    if options.bbox:
        return bbox_shards(run.input_root, options.bbox, options.zoom, settings)
    return discover_shards(run.input_root, settings)


def _planned_units(shards: list[Shard], run: Run, tally) -> ray.data.Dataset:
    if not shards:
        return ray.data.from_arrow(UNIT_SCHEMA.empty_table())
    rows = [{"index": index, "shard": shard} for index, shard in enumerate(shards)]
    return ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        plan_shards, batch_size=1, batch_format="numpy", num_cpus=PLAN_CPUS,
        fn_kwargs={"input_root": run.input_root, "output": run.output, "settings": run.settings,
                   "manifest": run.manifest, "tally": tally})


def _tally(batch: pa.Table, counts, failures: FailureLog, samples: PreviewSamples) -> None:
    for name in ("bytes_read", "tile_bytes"):
        counts[name] += pc.sum(batch.column(name)).as_py() or 0
    for key, status, reason, count in zip(*(batch.column(name).to_pylist()
                                            for name in ("key", "status", "reason", "count"))):
        counts[status] += count
        if status == "failed":
            failures.add(key, reason)
        elif status != "empty":
            samples.offer(key)
    failures.flush()


class FailureLog:
    """Failed tiles streamed to OUTPUT/_failures/<time>.parquet; no file when nothing failed.

    When the list itself cannot be written (a full disk, a store that refuses), the run ends
    with a TranslateError saying how many tiles failed and why the list is missing, and no
    partial list is left behind."""

    def __init__(self, output: storage.Location, rows_per_flush: int = 10_000):
        self.output, self.rows_per_flush = output, rows_per_flush
        self.pending: list[dict] = []
        self.writer = self.stream = self.path = None
        self.uri: str | None = None
        self.count, self.first = 0, None

    def add(self, key: str, reason: str) -> None:
        self.pending.append({"key": key, "reason": reason})
        self.count += 1
        self.first = self.first or (key, reason)

    def flush(self, force: bool = False) -> None:
        if not self.pending or (len(self.pending) < self.rows_per_flush and not force):
            return
        try:
            if self.writer is None:
                name = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}.parquet"
                target = self.output.join(FAILURES_DIR, name)
                self.output.filesystem.create_dir(posixpath.dirname(target.path), recursive=True)
                self.path, self.uri = target.path, target.uri
                self.stream = self.output.filesystem.open_output_stream(target.path)
                self.writer = pq.ParquetWriter(self.stream, FAILURE_SCHEMA)
            self.writer.write_table(pa.Table.from_pylist(self.pending, schema=FAILURE_SCHEMA))
        except OSError as error:
            raise self._lost(error) from None
        self.pending = []

    def _lost(self, error: OSError) -> TranslateError:
        for close in (self.writer, self.stream):
            try:
                if close is not None:
                    close.close()
            except OSError:
                pass
        if self.path is not None:
            try:
                self.output.filesystem.delete_file(self.path)
            except OSError:
                pass
        key, reason = self.first
        return TranslateError(storage.redact(
            f"{self.count} tiles failed (first: {key}: {reason}) and their list could not be written to "
            f"{self.output.join(FAILURES_DIR).uri}: {error}"))

    def __enter__(self) -> FailureLog:
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        try:
            self.flush(force=True)
            if self.writer is not None:
                try:
                    self.writer.close()
                    self.stream.close()
                except OSError as error:
                    raise self._lost(error) from None
        except TranslateError:
            if exc_type is None:  # never hide the error that is already on its way out
                raise
