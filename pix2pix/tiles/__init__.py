"""The tile pipeline: XYZ keys and math, translation and its plan, previews, tilesets (TileJSON,
PMTiles) and the map viewer."""
