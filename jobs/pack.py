"""Pack a folder of translated XYZ tiles into one PMTiles archive.

    python jobs/pack.py --input s3://bucket/maps --output city.pmtiles        # or s3://bucket/city.pmtiles

One file instead of millions of objects: served by any static host or bucket that answers
HTTP Range requests (MapLibre and Leaflet read it with the PMTiles plugin), or by
`jobs/view.py --map city.pmtiles`. Identical tiles (open water, bare fields) are stored once.
The archive's metadata carries the TileJSON fields and the palette. With no flags, packs the
demo's translated tiles next to them.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pix2pix import cli, demo_paths, storage  # noqa: E402


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", help="folder of z/x/y tiles, local or s3:// (default: the demo's translated tiles)")
    parser.add_argument("--output", help="the .pmtiles file, local or s3:// (default: next to the demo's tiles)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing archive")
    args = parser.parse_args(argv)
    if (args.input is None) != (args.output is None):
        parser.error("give --input and --output together, or neither for the demo")
    if args.input is None:
        args.input, args.output = demo_paths.DEMO_TRANSLATED, demo_paths.DEMO_TRANSLATED + ".pmtiles"
    if not args.output.endswith(".pmtiles"):
        parser.error("--output must end in .pmtiles")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from pix2pix.tiles.tileset import (
        TileSetError,
        archive_metadata,
        folder_palette,
        read_tiles,
        scan,
        write_pmtiles,
    )

    started = time.perf_counter()
    source, target = storage.resolve(args.input), storage.resolve(args.output)
    if storage.exists(target) and not args.overwrite:
        raise TileSetError(f"{args.output} exists: pass --overwrite to replace it")
    if not storage.is_dir(source):
        raise TileSetError(f"input not found or not a folder: {args.input}")
    tiles = scan(source)
    palette = folder_palette(source)
    # Written to a local file first: the archive's directory comes before its tiles, and is
    # known only when every tile has been seen.
    with tempfile.TemporaryDirectory() as scratch:
        local = os.path.join(scratch, "archive.pmtiles")
        with open(local, "wb") as handle:
            counts = write_pmtiles(handle, read_tiles(tiles), tiles.extension, archive_metadata(tiles, palette),
                                   tiles.bounds(), tiles.center())
        size = os.path.getsize(local)
        if target.is_local:
            os.makedirs(os.path.dirname(os.path.abspath(target.path)), exist_ok=True)
            os.replace(local, target.path)
        else:
            with open(local, "rb") as handle:
                storage.write_bytes(target.filesystem, target.path, handle.read())
    seconds = time.perf_counter() - started
    cli.print_summary({"input": args.input, "output": args.output, **counts, "archive_bytes": size,
                       "zooms": list(tiles.zooms), "seconds": round(seconds, 2),
                       "tiles_per_s": round(counts["tiles"] / seconds, 1),
                       "palette": list(palette) if palette else None,
                       "links_outside_skipped": tiles.links_outside})
    return 0


if __name__ == "__main__":
    cli.run(main)
