"""The map page in a real headless browser (Debian's chromium + chromedriver through selenium):
jobs/view.py serves known tiles from a folder and from a PMTiles archive made by jobs/pack.py;
the screenshot must show each tile's palette colours at the right places, on both sides of the
swipe divider, after the layer buttons and after a drag; no request may leave the server.

Skipped when no browser is installed, unless PIX2PIX_REQUIRE_BROWSER=1 (set by .ci/run).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time

import mercantile
import numpy as np
import pytest
from PIL import Image

from pix2pix import storage
from pix2pix.model.palette import RECIFE_PALETTE, encode_paletted_png
from pix2pix.tiles.tileset import TILEJSON_FILE, scan, tilejson, xyz_template
from tests.conftest import REPO

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
ZOOM, X0, Y0, COLUMNS, ROWS, SIZE = 16, 25000, 34000, 4, 3, 128
WIDTH, HEIGHT = 800, 600


def browser_or_skip():
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
    if webdriver is None or not (CHROMIUM and CHROMEDRIVER):
        message = "needs selenium, chromium and chromedriver (apt-get install chromium chromium-driver)"
        if os.environ.get("PIX2PIX_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--force-device-scale-factor=1", "--disable-gpu",
                     f"--window-size={WIDTH},{HEIGHT}", "--disable-background-networking",
                     "--disable-component-update", "--no-first-run", "--hide-scrollbars"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))


def map_classes(x: int, y: int) -> np.ndarray:
    """A tile's class indices: four quadrants of classes that depend on the tile, and a road stripe."""
    classes = np.zeros((SIZE, SIZE), np.uint8)
    half = SIZE // 2
    for quadrant, (top, left) in enumerate(((0, 0), (0, half), (half, 0), (half, half))):
        classes[top:top + half, left:left + half] = (x * 3 + y * 5 + quadrant) % len(RECIFE_PALETTE)
    classes[:, 20:26] = list(RECIFE_PALETTE).index("road")
    return classes


def satellite_rgb(x: int, y: int) -> np.ndarray:
    return np.full((SIZE, SIZE, 3), (40 + 30 * (x - X0), 90 + 40 * (y - Y0), 70), np.uint8)


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiles")
    colours = np.array(list(RECIFE_PALETTE.values()), np.uint8)
    mosaics = {"map": np.zeros((ROWS * SIZE, COLUMNS * SIZE, 3), np.uint8), "satellite": None}
    mosaics["satellite"] = mosaics["map"].copy()
    for column in range(COLUMNS):
        for row in range(ROWS):
            x, y = X0 + column, Y0 + row
            area = np.s_[row * SIZE:(row + 1) * SIZE, column * SIZE:(column + 1) * SIZE]
            (root / "map" / str(ZOOM) / str(x)).mkdir(parents=True, exist_ok=True)
            (root / "map" / str(ZOOM) / str(x) / f"{y}.png").write_bytes(
                encode_paletted_png(map_classes(x, y), RECIFE_PALETTE))
            mosaics["map"][area] = colours[map_classes(x, y)]
            (root / "sat" / str(ZOOM) / str(x)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(satellite_rgb(x, y)).save(root / "sat" / str(ZOOM) / str(x) / f"{y}.png")
            mosaics["satellite"][area] = satellite_rgb(x, y)
    location = storage.resolve(str(root / "map"))
    tileset = scan(location)
    document = tilejson(tileset, xyz_template(location, ".png"), RECIFE_PALETTE)
    (root / "map" / TILEJSON_FILE).write_text(json.dumps(document))
    packed = subprocess.run([sys.executable, "jobs/pack.py", "--input", str(root / "map"),
                             "--output", str(root / "map.pmtiles")], cwd=REPO, capture_output=True, text=True)
    assert packed.returncode == 0, packed.stderr
    summary = json.loads(packed.stdout.strip().splitlines()[-1])
    assert summary["tiles"] == COLUMNS * ROWS and summary["palette"] == list(RECIFE_PALETTE)
    return {"root": root, **mosaics}


def start_viewer(map_source: str, satellite: str):
    process = subprocess.Popen([sys.executable, "jobs/view.py", "--map", map_source, "--satellite", satellite,
                                "--port", "0"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    match = re.search(r"http://[0-9.]+:\d+/", line)
    if not match:
        process.kill()
        raise AssertionError(f"no address from jobs/view.py: {line!r} {process.stderr.read()}")
    return process, match[0]


def screenshot(driver) -> tuple[np.ndarray, list]:
    """The viewport once every tile has loaded, and the rectangles of the panels over the map."""
    deadline = time.monotonic() + 30
    while driver.execute_script("return document.body.dataset.loading") != "0":
        assert time.monotonic() < deadline, "tiles did not load"
        time.sleep(0.1)
    panels = driver.execute_script("return [...document.querySelectorAll('.panel')].filter(e => !e.hidden)"
                                   ".map(e => { const r = e.getBoundingClientRect(); "
                                   "return [r.left - 8, r.top - 8, r.right + 8, r.bottom + 8]; })")  # shadows included
    return np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")), panels


def expected_colour(mosaics, layer: str, world_x: int, world_y: int):
    """What a screen pixel over world pixel (world_x, world_y) at ZOOM must show (None: no tile)."""
    column, row = world_x - X0 * SIZE, world_y - Y0 * SIZE
    if not (0 <= column < COLUMNS * SIZE and 0 <= row < ROWS * SIZE):
        return None
    return tuple(int(v) for v in mosaics[layer][row, column])


def check_pixels(shot, mosaics, centre: tuple[int, int], layer_at) -> int:
    """Compare sample pixels away from the panels and the divider; returns how many had a tile."""
    image, panels = shot
    height, width = image.shape[:2]
    checked = 0
    for screen_y in range(3, height - 3, 11):
        for screen_x in range(3, width - 3, 13):
            layer = layer_at(screen_x)
            if layer is None or any(left <= screen_x <= right and top <= screen_y <= bottom
                                    for left, top, right, bottom in panels):
                continue
            world = (centre[0] + screen_x - width // 2, centre[1] + screen_y - height // 2)
            want = expected_colour(mosaics, layer, *world)
            if want is None:
                continue
            got = tuple(int(v) for v in image[screen_y, screen_x])
            assert got == want, f"{layer} pixel at screen ({screen_x}, {screen_y}): {got}, expected {want}"
            checked += 1
    return checked


@pytest.mark.parametrize("source", ["folder", "pmtiles"])
def test_the_map_page_shows_each_tile_where_it_belongs(tiles, source):
    driver = browser_or_skip()
    root = tiles["root"]
    map_source = str(root / "map") if source == "folder" else str(root / "map.pmtiles")
    process, url = start_viewer(map_source, str(root / "sat"))
    try:
        # Centre the view on the middle of tile (X0 + 1, Y0 + 1).
        box = mercantile.bounds(X0 + 1, Y0 + 1, ZOOM)
        lat, lon = (box.south + box.north) / 2, (box.west + box.east) / 2
        driver.get(f"{url}#{ZOOM}/{lat:.9f}/{lon:.9f}")
        centre = ((X0 + 1) * SIZE + SIZE // 2, (Y0 + 1) * SIZE + SIZE // 2)
        shot = screenshot(driver)
        width = shot[0].shape[1]
        split = width // 2
        swipe = check_pixels(shot, tiles, centre,
                             lambda x: None if abs(x - split) < 4 else ("map" if x > split else "satellite"))
        assert swipe > 600
        legend = driver.find_element("id", "legend").text
        assert all(name in legend for name in RECIFE_PALETTE)

        driver.find_element("css selector", "[data-mode=map]").click()
        assert check_pixels(screenshot(driver), tiles, centre, lambda x: "map") > 1000
        driver.find_element("css selector", "[data-mode=satellite]").click()
        assert check_pixels(screenshot(driver), tiles, centre, lambda x: "satellite") > 1000

        from selenium.webdriver.common.action_chains import ActionChains

        driver.find_element("css selector", "[data-mode=map]").click()
        ActionChains(driver).move_to_element_with_offset(driver.find_element("id", "map"), 0, 0) \
            .click_and_hold().move_by_offset(-SIZE, -10).release().perform()
        assert check_pixels(screenshot(driver), tiles, (centre[0] + SIZE, centre[1] + 10), lambda x: "map") > 800

        requests = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert requests and all(request.startswith(url) for request in requests), requests
        assert any("/map/" in request for request in requests) and any("/satellite/" in request for request in requests)
    finally:
        driver.quit()
        process.kill()
        process.wait()
