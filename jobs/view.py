"""Browse translated map tiles over the satellite tiles in a web page, offline.

    python jobs/view.py --map s3://bucket/maps --satellite s3://bucket/sat     # or --map city.pmtiles

Serves the page, the tiles and their TileJSON from this machine (nothing is fetched from the
internet: it works inside a cluster and on a plane) and prints its address. Pan by dragging,
zoom with the wheel or +/-, compare with the swipe divider or show one layer. With no flags,
shows the demo's translated tiles over the demo's satellite tiles.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pix2pix import cli, demo_paths  # noqa: E402


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--map", help="translated tiles: a folder of z/x/y tiles (local or s3://) or a local "
                        ".pmtiles archive (default: the demo's)")
    parser.add_argument("--satellite", help="the source tiles, the same way (default: the demo's with the demo's "
                        "map; none otherwise)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface; "
                        "then name with --allow-host what other machines call this one)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="a host name requests may carry besides localhost and the bound address (a "
                        "tunnel's or proxy's); repeatable. Other names are refused (DNS rebinding)")
    args = parser.parse_args(argv)
    if args.map is None:
        args.map = demo_paths.DEMO_TRANSLATED
        args.satellite = args.satellite or os.path.join(demo_paths.DEMO_TILES, "sat")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from pix2pix.tiles.viewer import open_layer, serve

    layers = {"map": open_layer("map", args.map)}
    if args.satellite:
        layers["satellite"] = open_layer("satellite", args.satellite)
    for layer in layers.values():
        if layer.links_outside:
            print(f"{layer.name}: {layer.links_outside} links to files outside the folder skipped", flush=True)
    server = serve(layers, args.host, args.port, tuple(args.allow_host))
    host, port = server.server_address[:2]
    print(f"map page: http://{host}:{port}/  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    cli.run(main)
