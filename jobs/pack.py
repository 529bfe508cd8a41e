"""Pack a folder of translated XYZ tiles into one PMTiles archive or one class COG.

    python jobs/pack.py --input s3://bucket/maps --output city.pmtiles        # or s3://bucket/city.pmtiles
    python jobs/pack.py --input s3://bucket/maps --output city.tif            # a class COG, for GIS

PMTiles: one file instead of millions of objects, served by any static host or bucket that
answers HTTP Range requests (MapLibre and Leaflet read it with the PMTiles plugin), or by
`jobs/view.py --map city.pmtiles`. Identical tiles (open water, bare fields) are stored once. The
archive's metadata carries the TileJSON fields and the palette. First, by default, the zoom
levels below the translated (deepest) one are built down to --min-zoom (by default the deepest
zoom at which the area fits in 4 x 4 tiles, about a screen; the translated zoom for none) and
written into the folder beside it, replacing what those levels held there (a pyramid: each tile
from its four children, class tiles by mode, colour tiles averaged; pix2pix/tiles/pyramid.py), so
a map zoomed out shows the area in a few tiles rather than thousands.

COG (.tif or .tiff): the translated zoom's paletted class tiles as one single-band uint8
Cloud-Optimized GeoTIFF in EPSG:3857, its internal tiles the XYZ tiles, the palette its colour
table, nodata 255, overviews by mode down to --min-zoom (each equal to the pyramid level of its
zoom), the class names in its tags and in the `.tif.aux.xml` sidecar written beside it (QGIS
reads them there).

With no flags, packs the demo's translated tiles next to them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pix2pix import cli, demo_paths, storage  # noqa: E402

COG_SUFFIXES = (".tif", ".tiff")


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", help="folder of z/x/y tiles, local or s3:// (default: the demo's translated tiles)")
    parser.add_argument("--output", help="a .pmtiles archive or a .tif class COG (the suffix says which), local "
                                         "or s3:// (default: an archive next to the demo's tiles)")
    parser.add_argument("--min-zoom", type=int, help="the lowest zoom built below the translated one: the "
                                                     "archive's pyramid levels (none at the translated zoom) or the "
                                                     "COG's overviews (down to the default at least) (default: the "
                                                     "deepest zoom at which the area fits in 4 x 4 tiles)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing archive or COG")
    args = parser.parse_args(argv)
    if (args.input is None) != (args.output is None):
        parser.error("give --input and --output together, or neither for the demo")
    if args.input is None:
        args.input, args.output = demo_paths.DEMO_TRANSLATED, demo_paths.DEMO_TRANSLATED + ".pmtiles"
    if not args.output.lower().endswith((".pmtiles", *COG_SUFFIXES)):
        parser.error("--output must end in .pmtiles (an archive) or .tif (a class COG)")
    if args.min_zoom is not None and args.min_zoom < 0:
        parser.error("--min-zoom must be 0 or more")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from pix2pix.tiles.class_cog import SIDECAR_SUFFIX
    from pix2pix.tiles.pyramid import default_min_zoom
    from pix2pix.tiles.tileset import TileSetError, folder_palette, scan

    started = time.perf_counter()
    source, target = storage.resolve(args.input), storage.resolve(args.output)
    cog = args.output.lower().endswith(COG_SUFFIXES)
    outputs = [target, storage.resolve(args.output + SIDECAR_SUFFIX)] if cog else [target]
    for output in outputs:
        if storage.exists(output) and not args.overwrite:
            raise TileSetError(f"{output.uri} exists: pass --overwrite to replace it")
    if not storage.is_dir(source):
        raise TileSetError(f"input not found or not a folder: {args.input}")
    tiles = scan(source)
    deepest = tiles.zooms[1]
    if args.min_zoom is not None and args.min_zoom > deepest:
        raise TileSetError(f"--min-zoom {args.min_zoom} is deeper than the translated zoom {deepest}")
    min_zoom = default_min_zoom(tiles.keys) if args.min_zoom is None else args.min_zoom
    palette = folder_palette(source)
    summary = (pack_cog(tiles, min_zoom, palette, outputs) if cog
               else pack_archive(tiles, min_zoom, palette, target))
    seconds = time.perf_counter() - started
    cli.print_summary({"input": args.input, "output": args.output, **summary, "seconds": round(seconds, 2),
                       "tiles_per_s": round(summary["tiles"] / seconds, 1),
                       "palette": list(palette) if palette else None,
                       "links_outside_skipped": tiles.links_outside})
    return 0


def pack_archive(tiles, min_zoom: int, palette, target: storage.Location) -> dict:
    from dataclasses import replace

    from pix2pix.tiles.pyramid import build_pyramid
    from pix2pix.tiles.tileset import archive_metadata, read_tiles, write_pmtiles

    started = time.perf_counter()
    built = build_pyramid(tiles, min_zoom, palette)
    pyramid_seconds = time.perf_counter() - started
    tiles = replace(tiles, keys={**tiles.keys, **built})
    with scratch_beside(target) as scratch:
        # Written to a local file first: the archive's directory comes before its tiles, and is
        # known only when every tile has been seen.
        local = os.path.join(scratch, "archive.pmtiles")
        with open(local, "wb") as handle:
            counts = write_pmtiles(handle, read_tiles(tiles), tiles.extension, archive_metadata(tiles, palette),
                                   tiles.bounds(), tiles.center())
        size = os.path.getsize(local)
        place(local, target)
    levels = Counter(tile.z for tile in built)
    return {**counts, "archive_bytes": size, "zooms": list(tiles.zooms),
            "pyramid_tiles": {str(zoom): levels[zoom] for zoom in sorted(levels, reverse=True)},
            "pyramid_seconds": round(pyramid_seconds, 2)}


def pack_cog(tiles, min_zoom: int, palette, outputs: list[storage.Location]) -> dict:
    from pix2pix.tiles.class_cog import SIDECAR_SUFFIX, write_class_cog
    from pix2pix.tiles.pyramid import default_min_zoom
    from pix2pix.tiles.tile_pixels import embedded_palette, is_paletted
    from pix2pix.tiles.tileset import TileSetError

    deepest = tiles.at_zoom(tiles.zooms[1])
    first = deepest.read(min(deepest.keys))
    if not is_paletted(first):
        raise TileSetError(f"a class COG needs paletted tiles of class indices; {tiles.root.uri} holds colour "
                           f"tiles: pack them into a .pmtiles archive")
    # Overviews at least until the area fits in a few tiles, as a COG's readers expect.
    levels = tiles.zooms[1] - min(min_zoom, default_min_zoom(deepest.keys))
    target, sidecar = outputs
    with scratch_beside(target) as scratch:
        local = os.path.join(scratch, "classes.tif")
        summary = write_class_cog(deepest, levels, palette or embedded_palette(first), local)
        # The sidecar first: the COG appears only once everything it comes with is there.
        place(local + SIDECAR_SUFFIX, sidecar)
        place(local, target)
    return summary


@contextlib.contextmanager
def scratch_beside(target: storage.Location):
    """A scratch folder on the target's filesystem when it is local (the finished file is then
    renamed into place, never copied half-way), else in the system's temporary folder."""
    if not target.is_local:
        with tempfile.TemporaryDirectory() as scratch:
            yield scratch
        return
    parent = os.path.dirname(os.path.abspath(target.path))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".pack-") as scratch:
        yield scratch


def place(local: str, target: storage.Location) -> None:
    """Move a finished local file to the target: a rename locally, else an upload streamed from
    disk, which S3 shows only once complete."""
    if target.is_local:
        os.replace(local, target.path)
        return
    import pyarrow.fs as pafs

    with storage.store_errors():
        pafs.copy_files(local, target.path, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=target.filesystem)


if __name__ == "__main__":
    cli.run(main)
