"""A deterministic synthetic paired dataset for the embedded demo (no internet, no real data in git).

Each scene is built in two steps. First a class layout (one label per pixel): a smooth terrain of
soil / vegetation / wetland, a street grid (slightly rotated and warped) whose blocks become urban
lots with buildings, yards and gardens, a meandering river with mangrove banks, ponds, and roads on
top (major roads bridge the water).
Then the aerial image is painted from the labels: per-class colours and textures, gabled roofs with
one colour per building, shadows to the south-east, a soft blur at class edges and colour jitter.
The map is the labels in the Recife land-cover palette, so it is a deterministic function of what
the aerial shows.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
from PIL import Image, ImageFilter

from pix2pix.model.palette import RECIFE_PALETTE

PALETTE = RECIFE_PALETTE
CLASS_NAMES = tuple(PALETTE)
# Class indices as uint8 so label arrays built with np.where stay one byte per pixel.
WATER, BUILDING, VEGETATION, ROAD, SOIL, OTHER, WETLAND = np.arange(len(CLASS_NAMES), dtype=np.uint8)
_PALETTE_ARRAY = np.array([PALETTE[name] for name in CLASS_NAMES], dtype=np.uint8)

# The zoom-17 tile holding Recife (lat -8.05, lon -34.9) is x=52829, y=68476 by the slippy-map
# formula x = floor((lon + 180) / 360 * 2^z), y = floor((1 - asinh(tan(lat)) / pi) / 2 * 2^z).
# The demo grid (6 x 4 tiles) is centred on it.
DEMO_ZOOM = 17
DEMO_TILE_COLUMNS, DEMO_TILE_ROWS = 6, 4
DEMO_TILE_X0, DEMO_TILE_Y0 = 52829 - 3, 68476 - 2
MARKER_NAME = ".demo-complete"
JPEG_QUALITY = 95

SHADOW_STEP = (1, 1)  # (dx, dy) pixels per step of shadow: the sun is in the north-west


# ----------------------------------------------------------------------------------------------
# Noise


def _value_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Smooth noise in [0, 1]: random values on a grid `cell` pixels apart, smoothstep-interpolated."""
    grid = rng.random((int(height / cell) + 2, int(width / cell) + 2), dtype=np.float32)

    def axis(length: int) -> tuple[np.ndarray, np.ndarray]:
        position = np.arange(length, dtype=np.float32) / np.float32(cell)
        index = np.floor(position)
        t = position - index
        return index.astype(np.int64), t * t * (3 - 2 * t)

    row_index, row_t = axis(height)
    col_index, col_t = axis(width)
    rows = grid[row_index] * (1 - row_t)[:, None] + grid[row_index + 1] * row_t[:, None]
    return rows[:, col_index] * (1 - col_t) + rows[:, col_index + 1] * col_t


def _fractal_noise(rng: np.random.Generator, height: int, width: int, cell: float, octaves: int) -> np.ndarray:
    """Sum of value noise at halving cell sizes, stretched back to roughly [0, 1]."""
    total = np.zeros((height, width), np.float32)
    weight_sum = 0.0
    for octave in range(octaves):
        weight = 0.5**octave
        total += np.float32(weight) * _value_noise(rng, height, width, max(cell / 2**octave, 1.0))
        weight_sum += weight
    # Averaging octaves shrinks the spread around 0.5; widen it again so thresholds read naturally.
    stretch = np.float32((1.0 + 0.5 * (octaves - 1)) / weight_sum)
    total *= stretch
    total -= np.float32(0.5 * weight_sum * stretch - 0.5)
    return np.clip(total, 0.0, 1.0, out=total)


# ----------------------------------------------------------------------------------------------
# Layout

MAX_LOTS = 16  # lots per block side; blocks are at most ~190 px long and lots at least 18 px wide


def _street_lines(rng: np.random.Generator, low: float, high: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Street positions covering [low, high] with irregular spacing; their half widths and majors."""
    positions = [low - rng.uniform(40, 160)]
    while positions[-1] < high + 40:
        positions.append(positions[-1] + rng.uniform(90, 190))
    positions = np.array(positions, np.float32)
    major = rng.random(len(positions)) < 0.25
    half_width = np.where(major, rng.uniform(6, 9, len(positions)), rng.uniform(3, 5, len(positions)))
    return positions, half_width.astype(np.float32), major


def _smooth_blocks(values: np.ndarray) -> np.ndarray:
    """3x3 mean of a small 2-D array (edges repeated), so urban blocks cluster into districts."""
    padded = np.pad(values, 1, mode="edge")
    rows, cols = values.shape
    return sum(padded[i:i + rows, j:j + cols] for i in range(3) for j in range(3)) / 9.0


def _street_segments(rng: np.random.Generator, major: np.ndarray, urban_along: np.ndarray) -> np.ndarray:
    """Which street segments exist: major roads everywhere, minor ones next to urban blocks
    (a few dropped: dead ends and merged blocks). Shape (lines, blocks along the line)."""
    padded = np.pad(urban_along, ((1, 1), (0, 0)), constant_values=False)
    near_urban = padded[:-1] | padded[1:]
    kept = rng.random(near_urban.shape) > 0.12
    return major[:, None] | (near_urban & kept)


def _urban_labels(rng: np.random.Generator, block_u, block_v, a, b, length_a, length_b, near_water) -> dict:
    """Labels and roof details for pixels of urban blocks (1-D arrays, block-local coordinates:
    `a`, `b` from the block's low corner inside the kerbs, `length_a`, `length_b` its size).
    Lots and blocks touching `near_water` pixels get no building: nothing is cut by the river."""
    blocks_v = int(block_v.max(initial=0)) + 1
    block_count = (int(block_u.max(initial=0)) + 1) * blocks_v
    per_block = rng.random((5, block_count), dtype=np.float32)
    per_lot = rng.random((6, block_count * MAX_LOTS * 2), dtype=np.float32)
    block = block_u * blocks_v + block_v
    kind, lot_width_pick, lot_depth_pick, court_pick, margin_pick = per_block[:, block]

    # Residential: lots along the two sides facing the v-streets, a courtyard in between.
    lot_count = np.clip(np.floor(length_a / (18 + 22 * lot_width_pick)), 1, MAX_LOTS)
    lot_width = length_a / lot_count
    lot_depth = np.minimum(length_b / 2, 26 + 30 * lot_depth_pick)
    lot_index = np.clip(np.floor(a / lot_width), 0, lot_count - 1)
    second_row = b >= length_b / 2
    across = np.where(second_row, length_b - b, b)  # distance from the lot's street front
    along = a - lot_index * lot_width
    in_lot = (across < lot_depth) & (a > 0) & (a < length_a) & (b > 0) & (b < length_b)
    lot = (block * MAX_LOTS + lot_index.astype(np.int64)) * 2 + second_row
    front_gap, side_gap, back_gap, vacant, yard_pick, flat_pick = per_lot[:, lot]
    front_gap, side_gap, back_gap = 2 + 6 * front_gap, 1 + 3 * side_gap, 1 + 5 * back_gap
    flooded_lot = np.bincount(lot[near_water], minlength=per_lot.shape[1]) > 0
    house = (in_lot & (vacant > 0.15) & ~flooded_lot[lot] & (across > front_gap) & (across < lot_depth - back_gap)
             & (along > side_gap) & (along < lot_width - side_gap))
    yard = np.where(yard_pick < 0.55, OTHER, np.where(yard_pick < 0.85, VEGETATION, SOIL))
    courtyard = np.where(court_pick < 0.5, VEGETATION, np.where(court_pick < 0.8, OTHER, SOIL))
    residential = np.where(house, BUILDING, np.where(in_lot, yard, courtyard))

    # Other kinds of block: one big flat-roofed building (warehouse, mall), a park, a paved lot.
    margin = 4 + 8 * margin_pick
    flooded_block = np.bincount(block[near_water], minlength=block_count) > 0
    big_building = (~flooded_block[block] & (a > margin) & (a < np.minimum(length_a - margin, margin + 110))
                    & (b > margin) & (b < np.minimum(length_b - margin, margin + 90)))
    labels = np.where(kind < 0.72, residential,
                      np.where(kind < 0.84, np.where(big_building, BUILDING, OTHER),
                               np.where(kind < 0.93, VEGETATION, OTHER)))

    # Roofs: a gable has a sunny and a shaded half split along the ridge (the longer axis).
    house_width, house_depth = lot_width - 2 * side_gap, lot_depth - back_gap - front_gap
    sunny_side = np.where(house_width > house_depth, across - front_gap < house_depth / 2,
                          along - side_gap < house_width / 2)
    is_big = kind >= 0.72
    roof_key = np.where(is_big, margin_pick, flat_pick) * np.float32(0.999)
    roof_flat = is_big | (flat_pick < 0.3)
    return {"labels": labels.astype(np.uint8), "roof_key": roof_key, "roof_flat": roof_flat,
            "sunny_side": sunny_side, "is_big": is_big}


def _river(rng: np.random.Generator, height: int, width: int, x: np.ndarray, y: np.ndarray):
    """A meandering river of varying width, likelier in larger scenes (it must cross the window).

    Returns |distance from the centre line| / half width (< 1 in the river, for the painter) and
    the distance in pixels outside the bank (negative in the river); both infinite without a river.
    """
    if rng.random() >= min(1.0, 0.35 * max(width, height) / 256):
        no_river = np.full((height, width), np.inf, np.float32)
        return no_river, no_river
    angle = rng.uniform(0, math.pi)
    cos_r, sin_r = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    centre_x, centre_y = np.float32(width * rng.uniform(0.3, 0.7)), np.float32(height * rng.uniform(0.3, 0.7))
    along = (x - centre_x) * cos_r + (y - centre_y) * sin_r
    across = (y - centre_y) * cos_r - (x - centre_x) * sin_r
    for _ in range(3):  # meanders: a few sine waves along the river
        across -= np.float32(rng.uniform(10, 45)) * np.sin(
            along / np.float32(rng.uniform(60, 260)) + np.float32(rng.uniform(0, 6.3)))
    distance = np.abs(across)
    half_width = np.float32(rng.uniform(14, 40)) * (0.8 + 0.4 * _value_noise(rng, height, width, 180))
    return distance / half_width, distance - half_width


def _layout(rng: np.random.Generator, height: int, width: int) -> dict:
    """Labels plus what the painter needs (roof details, street and river coordinates)."""
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]

    river_offset, river_bank = _river(rng, height, width, x, y)

    # Terrain: soil and vegetation from a smooth field, wetland where a moisture field is high.
    terrain = _fractal_noise(rng, height, width, 110, 3)
    moisture = _fractal_noise(rng, height, width, 150, 2)
    labels = np.where(terrain < rng.uniform(0.35, 0.6), SOIL, VEGETATION).astype(np.uint8)
    labels[moisture > 0.8] = WETLAND

    # Street grid in rotated, gently warped coordinates (u along one street direction, v across).
    angle = rng.uniform(-0.5, 0.5)
    cos_a, sin_a = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    u = x * cos_a + y * sin_a + (_value_noise(rng, height, width, 240) - 0.5) * 20
    v = y * cos_a - x * sin_a + (_value_noise(rng, height, width, 240) - 0.5) * 20
    corners_u = [cx * cos_a + cy * sin_a for cx in (0, width) for cy in (0, height)]
    corners_v = [cy * cos_a - cx * sin_a for cx in (0, width) for cy in (0, height)]
    lines_u, half_u, major_u = _street_lines(rng, min(corners_u), max(corners_u))
    lines_v, half_v, major_v = _street_lines(rng, min(corners_v), max(corners_v))
    blocks_u, blocks_v = len(lines_u) - 1, len(lines_v) - 1
    urban = _smooth_blocks(rng.random((blocks_u, blocks_v))) + rng.uniform(-0.2, 0.2) > 0.5
    segment_u = _street_segments(rng, major_u, urban)    # (lines_u, blocks_v)
    segment_v = _street_segments(rng, major_v, urban.T)  # (lines_v, blocks_u)

    block_u = np.clip(np.searchsorted(lines_u, u) - 1, 0, blocks_u - 1)
    block_v = np.clip(np.searchsorted(lines_v, v) - 1, 0, blocks_v - 1)
    from_low_u, to_high_u = u - lines_u[block_u], lines_u[block_u + 1] - u
    from_low_v, to_high_v = v - lines_v[block_v], lines_v[block_v + 1] - v
    nearest_u = np.where(from_low_u < to_high_u, block_u, block_u + 1)
    nearest_v = np.where(from_low_v < to_high_v, block_v, block_v + 1)
    road_u = (np.minimum(from_low_u, to_high_u) < half_u[nearest_u]) & segment_u[nearest_u, block_v]
    road_v = (np.minimum(from_low_v, to_high_v) < half_v[nearest_v]) & segment_v[nearest_v, block_u]
    road = road_u | road_v
    major_road = (road_u & major_u[nearest_u]) | (road_v & major_v[nearest_v])

    # Urban blocks: worked out only where they are.
    in_urban = urban[block_u, block_v]
    where = np.nonzero(in_urban)
    bu, bv = block_u[where], block_v[where]
    city = _urban_labels(rng, bu, bv, from_low_u[where] - half_u[bu], from_low_v[where] - half_v[bv],
                         lines_u[bu + 1] - lines_u[bu] - half_u[bu] - half_u[bu + 1],
                         lines_v[bv + 1] - lines_v[bv] - half_v[bv] - half_v[bv + 1], river_bank[where] < 6)
    labels[where] = city.pop("labels")
    city["pixels"] = np.ravel_multi_index(where, labels.shape)  # flat indices the roof details belong to

    # Water: the river with mangrove banks outside the city, and rural ponds.
    labels[(river_bank < 25 * (moisture + 0.3)) & ~in_urban] = WETLAND
    water = (river_bank < 0) | ((terrain > 0.86) & (moisture > 0.45) & ~in_urban)
    labels[water] = WATER
    labels[road & (major_road | ~water)] = ROAD  # major roads cross water on bridges, minor ones stop
    return {"labels": labels, "u": u, "v": v, "river_offset": river_offset, "city": city}


# ----------------------------------------------------------------------------------------------
# Painting


def _shift(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """`mask` moved by (dx, dy) pixels (right, down), filling with False."""
    height, width = mask.shape
    out = np.zeros_like(mask)
    if dx < width and dy < height:
        out[dy:, dx:] = mask[:height - dy, :width - dx]
    return out


def _class_edges(labels: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another class."""
    edge = np.zeros(labels.shape, bool)
    across = labels[:, 1:] != labels[:, :-1]
    edge[:, 1:] |= across
    edge[:, :-1] |= across
    down = labels[1:] != labels[:-1]
    edge[1:] |= down
    edge[:-1] |= down
    return edge


def _colour(rgb, shade) -> np.ndarray:
    """(n, 3) colours: an RGB base (or (n, 3) bases) times a per-pixel brightness (n,)."""
    return np.asarray(rgb, np.float32) * shade[:, None]


def _paint(rng: np.random.Generator, layout: dict) -> np.ndarray:
    labels = layout["labels"]
    height, width = labels.shape
    fine_2d = _fractal_noise(rng, height, width, 6, 2)
    relief = (fine_2d - np.roll(fine_2d, (2, 2), axis=(0, 1))).ravel()  # lit from the north-west
    fine = fine_2d.ravel()
    medium = _fractal_noise(rng, height, width, 24, 2).ravel()
    speckle = rng.random(height * width, dtype=np.float32)
    image = np.zeros((height * width, 3), np.float32)
    pixels = {label: np.flatnonzero(labels.ravel() == label) for label in range(len(CLASS_NAMES))}

    # Vegetation: tree crowns (fine clumps with dark gaps) over meadow tones.
    at = pixels[VEGETATION]
    crowns = np.clip((fine[at] - 0.35) * 2.5, 0, 1) * (0.6 + 0.6 * medium[at])
    image[at] = _colour((62, 88, 44), 0.6 + 0.6 * crowns + 0.9 * relief[at]) + _colour((14, 20, 0), medium[at])
    # Wetland: olive marsh grass with murky pools and channels.
    at = pixels[WETLAND]
    pools = (fine[at] < 0.33)[:, None]
    image[at] = np.where(pools, _colour((52, 66, 60), 0.8 + 0.3 * medium[at]),
                         _colour((100, 108, 64), 0.8 + 0.3 * medium[at] + 0.1 * speckle[at]))
    # Soil: sandy tan with speckles and larger damp patches.
    at = pixels[SOIL]
    image[at] = _colour((178, 150, 112), (0.85 + 0.2 * medium[at]) * (0.92 + 0.16 * speckle[at]))
    # Water: darker towards the middle of the river, with faint ripples.
    at = pixels[WATER]
    depth = np.clip(1.4 - layout["river_offset"].ravel()[at], 0.6, 1.0)  # ponds: 0.6
    ripples = np.sin(layout["u"].ravel()[at] * 0.9 + layout["v"].ravel()[at] * 0.4 + 6 * medium[at])
    image[at] = _colour((46, 68, 74), (1.15 - 0.5 * depth) * (1 + 0.05 * ripples))
    # Roads: asphalt with a little grain; other (paved yards, plazas): light concrete.
    at = pixels[ROAD]
    image[at] = _colour((98, 98, 100), 0.92 + 0.1 * speckle[at] + 0.08 * medium[at])
    at = pixels[OTHER]
    image[at] = _colour((176, 170, 158), 0.9 + 0.1 * speckle[at] + 0.1 * medium[at])

    # Roofs: one colour per building, gables with a sunny and a shaded half, flat roofs plain.
    city = layout["city"]
    is_roof = labels.ravel()[city["pixels"]] == BUILDING  # water and roads may cover city pixels
    at = city["pixels"][is_roof]
    roof_colours = np.array([[172, 84, 62], [150, 70, 55], [140, 142, 145], [214, 214, 208],
                             [118, 128, 140], [190, 120, 90]], np.float32)
    key = city["roof_key"][is_roof]
    tone = (key * 7) % 1  # a second, independent draw from the same key
    gable = np.where(city["sunny_side"][is_roof], 1.08, 0.8)
    shade = (0.88 + 0.24 * tone) * np.where(city["roof_flat"][is_roof], 1.0, gable) * (0.96 + 0.06 * speckle[at])
    image[at] = _colour(roof_colours[(key * len(roof_colours)).astype(np.int64)], shade)
    image = image.reshape(height, width, 3)

    # Shadows to the south-east: longer for the big buildings.
    building = labels == BUILDING
    tall = np.zeros_like(building)
    tall.ravel()[at[city["is_big"][is_roof]]] = True
    shadow = np.zeros_like(building)
    for step in range(1, 8):
        shadow |= _shift(building if step <= 3 else tall, step * SHADOW_STEP[0], step * SHADOW_STEP[1])
    shadow &= ~building
    image[shadow] *= 0.55

    # Soft class edges: blend in a blurred copy where the label changes.
    edge = _class_edges(labels) | (shadow ^ _shift(shadow, 1, 1))
    sharp = np.clip(image, 0, 255).astype(np.uint8)
    blurred = np.asarray(Image.fromarray(sharp).filter(ImageFilter.BoxBlur(1)), np.float32)
    image[edge] = 0.35 * image[edge] + 0.65 * blurred[edge]

    # Whole-scene colour cast, uneven lighting and sensor noise.
    cast = (rng.uniform(0.9, 1.1, 3) * rng.uniform(0.9, 1.1)).astype(np.float32)
    image *= (0.93 + 0.14 * _value_noise(rng, height, width, 300))[..., None]
    image *= cast
    image += (speckle.reshape(height, width, 1) - np.float32(0.5)) * np.float32(6)
    return np.clip(image, 0, 255, out=image).astype(np.uint8)


def render_scene(seed: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic aerial image and its colour-coded map, both (height, width, 3) uint8.

    Deterministic for a given (seed, width, height); the map holds only `PALETTE` colours.
    """
    if width < 1 or height < 1:
        raise ValueError(f"scene size must be positive, got {width}x{height}")
    rng = np.random.default_rng(seed)
    layout = _layout(rng, height, width)
    aerial = _paint(rng, layout)
    return aerial, _PALETTE_ARRAY[layout["labels"]]


# ----------------------------------------------------------------------------------------------
# Writing


def _save(array: np.ndarray, path: str) -> None:
    """Write JPEG (quality 95) or lossless PNG by extension, via a temporary name then rename."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image_format = "JPEG" if path.endswith(".jpg") else "PNG"
    options = {"quality": JPEG_QUALITY} if image_format == "JPEG" else {"compress_level": 1}  # fast, still lossless
    temporary = f"{path}.tmp-{os.getpid()}"
    Image.fromarray(array).save(temporary, format=image_format, **options)
    os.replace(temporary, path)


def write_pairs(root: str, count: int, size: int = 256, seed: int = 0) -> list[str]:
    """`count` pairs as root/sat/NNNN.jpg and root/map/NNNN.png; returns the keys ("0000", ...)."""
    digits = max(4, len(str(count - 1)))
    keys = []
    for index in range(count):
        key = f"{index:0{digits}d}"
        aerial, label_map = render_scene(seed * 100003 + index, size, size)
        _save(aerial, os.path.join(root, "sat", f"{key}.jpg"))
        _save(label_map, os.path.join(root, "map", f"{key}.png"))
        keys.append(key)
    return keys


def write_tile_grid(root: str, zoom: int, x0: int, y0: int, columns: int, rows: int,
                    tile_size: int = 256, seed: int = 12345) -> list[str]:
    """One scene cut into contiguous XYZ tiles: root/sat/{z}/{x}/{y}.jpg and root/map/{z}/{x}/{y}.png.

    Column c is tile x0 + c, row r is tile y0 + r (north on top). Returns the "z/x/y.jpg" keys.
    """
    aerial, label_map = render_scene(seed, columns * tile_size, rows * tile_size)
    keys = []
    for column in range(columns):
        for row in range(rows):
            window = np.s_[row * tile_size:(row + 1) * tile_size, column * tile_size:(column + 1) * tile_size]
            tile = f"{zoom}/{x0 + column}/{y0 + row}"
            _save(np.ascontiguousarray(aerial[window]), os.path.join(root, "sat", f"{tile}.jpg"))
            _save(np.ascontiguousarray(label_map[window]), os.path.join(root, "map", f"{tile}.png"))
            keys.append(f"{tile}.jpg")
    return keys


def _count_files(folder: str) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def generate_demo(root: str, pairs: int = 300, size: int = 256, seed: int = 0, tile_seed: int = 12345,
                  columns: int = DEMO_TILE_COLUMNS, rows: int = DEMO_TILE_ROWS) -> dict:
    """The demo inputs: training pairs in root/raw and a tile grid around Recife in root/tiles.

    Idempotent: root/.demo-complete (written last) records the parameters; when it matches and the
    files are all there nothing is written. Otherwise root/raw and root/tiles are rebuilt.
    """
    parameters = {"pairs": pairs, "size": size, "seed": seed, "tile_seed": tile_seed, "zoom": DEMO_ZOOM,
                  "x0": DEMO_TILE_X0, "y0": DEMO_TILE_Y0, "columns": columns, "rows": rows}
    raw, tiles = os.path.join(root, "raw"), os.path.join(root, "tiles")
    marker = os.path.join(root, MARKER_NAME)
    summary = {"pairs": pairs, "tiles": columns * rows, "root": root}
    if os.path.exists(marker):
        with open(marker) as file:
            recorded = json.load(file)
        complete = (_count_files(raw) == 2 * pairs and _count_files(tiles) == 2 * columns * rows)
        if recorded == parameters and complete:
            return {**summary, "generated": False, "message": "demo data already present"}
        os.remove(marker)
    for folder in (raw, tiles):  # these folders belong to the demo: no stale files survive
        shutil.rmtree(folder, ignore_errors=True)
    write_pairs(raw, pairs, size, seed)
    write_tile_grid(tiles, DEMO_ZOOM, DEMO_TILE_X0, DEMO_TILE_Y0, columns, rows, size, tile_seed)
    temporary = f"{marker}.tmp-{os.getpid()}"
    with open(temporary, "w") as file:
        json.dump(parameters, file)
    os.replace(temporary, marker)
    return {**summary, "generated": True, "message": f"wrote {pairs} pairs and {columns * rows} tiles"}
