import io

import numpy as np
import pytest
from PIL import Image

from pix2pix.images import BadImage, decode_image, encode_image
from pix2pix.model.ranges import to_model_range
from pix2pix.training.augmentation import augment_pair, load_size_for, paired_transform, preprocess_records
from pix2pix.training.pairs import decode_pair, split_side_by_side


def encode(array, fmt="PNG", mode=None):
    buffer = io.BytesIO()
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def test_decode_converts_every_mode_to_rgb(rgb):
    assert np.array_equal(decode_image(encode(rgb)), rgb)
    for mode in ["L", "P", "RGBA", "LA"]:
        out = decode_image(encode(rgb, mode=mode))
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    sixteen = Image.fromarray((np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60))
    buffer = io.BytesIO()
    sixteen.save(buffer, format="PNG")
    out = decode_image(buffer.getvalue())
    assert out.shape == (32, 32, 3) and out.max() > 200 and out.min() == 0


@pytest.mark.parametrize("payload,reason", [(b"", "empty"), (b"hello, not an image", "not a recognised image format")])
def test_undecodable_bytes_raise_bad_image(payload, reason):
    with pytest.raises(BadImage, match=reason):
        decode_image(payload)


def test_truncated_jpeg_is_bad(rgb):
    jpeg = encode(np.tile(rgb, (8, 8, 1)), "JPEG")
    with pytest.raises(BadImage):
        decode_image(jpeg[: len(jpeg) // 2])


def test_truncated_png_is_bad(rgb):
    png = encode(np.tile(rgb, (8, 8, 1)))
    with pytest.raises(BadImage):
        decode_image(png[: len(png) // 2])


def test_image_bomb_rejected_from_header_before_decoding():
    bomb = encode(np.zeros((4000, 4000), dtype=np.uint8))  # compresses to a few kB
    with pytest.raises(BadImage, match="4000x4000 exceeds"):
        decode_image(bomb, max_pixels=1024 * 1024)


def test_side_by_side_split_and_direction(rgb):
    both = np.concatenate([rgb, 255 - rgb], axis=1)
    source, target = split_side_by_side(both, "left")
    assert np.array_equal(source, rgb) and np.array_equal(target, 255 - rgb)
    source, target = split_side_by_side(both, "right")
    assert np.array_equal(source, 255 - rgb)
    with pytest.raises(BadImage, match="twice as wide"):
        split_side_by_side(rgb, "left")


def test_decode_pair_rejects_mismatched_sizes(rgb):
    record = {"layout": "paired", "source": encode(rgb), "target": encode(rgb[:16])}
    with pytest.raises(BadImage, match="32x32 but target is 32x16"):
        decode_pair(record)


def blocks_image(size: int = 64) -> np.ndarray:
    """A map-like image: flat colour blocks (three palette colours), one off-centre."""
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[10:30, 5:20] = (255, 0, 0)
    image[40:60, 30:60] = (0, 127, 255)
    return image


def centre_of(image: np.ndarray, colour) -> np.ndarray:
    rows, columns = np.nonzero(np.abs(image.astype(int) - colour).max(axis=2) < 64)
    return np.array([rows.mean(), columns.mean()])


def test_training_augmentation_crops_and_flips_source_and_target_alike():
    image = blocks_image()
    transform = paired_transform(64, train=True, seed=3)
    for _ in range(12):
        source, target = augment_pair(transform, image, image.copy())
        assert source.shape == target.shape == (64, 64, 3)
        for colour in ((255, 0, 0), (0, 127, 255)):
            assert np.abs(centre_of(source, colour) - centre_of(target, colour)).max() < 1.0
    assert load_size_for(256) == 286


def test_the_target_keeps_its_exact_colours_the_source_is_interpolated():
    image = blocks_image()
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    for train in (True, False):
        source, target = augment_pair(paired_transform(64 if train else 48, train=train, seed=1),
                                           image, image.copy())
        assert {tuple(c) for c in target.reshape(-1, 3)} <= colours
        assert len({tuple(c) for c in source.reshape(-1, 3)}) > len(colours)


def test_augmentation_crops_and_flips_vary():
    image = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    transform = paired_transform(64, train=True, seed=5)
    outputs = {augment_pair(transform, image, image)[0].tobytes() for _ in range(10)}
    assert len(outputs) > 3
    marker = np.zeros((64, 64, 3), dtype=np.uint8)
    marker[:, :8] = 255  # a bright left edge ends up on the right after a flip
    sides = set()
    for _ in range(20):
        source, target = augment_pair(transform, marker, marker)
        sides.add(bright_left(source))
        assert bright_left(target) == bright_left(source)
    assert sides == {True, False}


def bright_left(image: np.ndarray) -> bool:
    return bool(image[:, :4].mean() > image[:, -4:].mean())


def bright_corner(image: np.ndarray) -> tuple[int, int]:
    """Which quadrant (row, column) holds the bright marker."""
    half = image.shape[0] // 2
    means = {(r, c): image[r * half:(r + 1) * half, c * half:(c + 1) * half].mean() for r in (0, 1) for c in (0, 1)}
    return max(means, key=means.get)


@pytest.mark.parametrize("flips, corners", [("horizontal", {(0, 0), (0, 1)}),
                                            ("square", {(0, 0), (0, 1), (1, 0), (1, 1)})])
def test_square_flips_also_rotate_source_and_target_alike(flips, corners):
    marker = np.zeros((64, 64, 3), dtype=np.uint8)
    marker[:16, :16] = 255  # top left: a horizontal flip moves it right, a quarter turn down too
    transform = paired_transform(64, train=True, seed=4, flips=flips)
    seen = set()
    for _ in range(40):
        source, target = augment_pair(transform, marker, marker)
        assert bright_corner(target) == bright_corner(source)
        seen.add(bright_corner(source))
    assert seen == corners


def test_eval_transform_resizes_only(rgb):
    source, target = augment_pair(paired_transform(64, train=False), rgb, rgb)
    assert source.shape == target.shape == (64, 64, 3)
    same_size = augment_pair(paired_transform(32, train=False), rgb, rgb)
    assert np.array_equal(same_size[0], rgb) and np.array_equal(same_size[1], rgb)


def test_preprocess_records_gives_uint8_nchw_and_model_range(rgb):
    record = {"key": "a", "layout": "side-by-side", "image": encode(np.concatenate([rgb, rgb], 1)),
              "source_side": "left"}
    batch = preprocess_records([record, record], paired_transform(32, train=False))
    assert batch["source"].shape == (2, 3, 32, 32) and batch["source"].dtype == np.uint8
    scaled = to_model_range(batch["source"].astype(np.float32))
    assert scaled.min() >= -1 and scaled.max() <= 1


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_encode_round_trip(rgb, fmt):
    decoded = decode_image(encode_image(rgb, fmt))
    assert decoded.shape == rgb.shape
    if fmt == "png":
        assert np.array_equal(decoded, rgb)


def test_only_the_listed_formats_are_decoded_and_exif_orientation_is_not_applied(rgb):
    import PIL.Image

    for fmt in ("GIF", "ICO", "PPM", "TGA"):  # formats Pillow reads, outside the list
        with pytest.raises(BadImage, match="not a recognised image format"):
            decode_image(encode(rgb, fmt))
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(BadImage, match="not a recognised image format"):
        decode_image(eps)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buffer = io.BytesIO()
    PIL.Image.fromarray(rgb).save(buffer, format="PNG", exif=exif)
    assert PIL.Image.open(io.BytesIO(buffer.getvalue())).getexif()[0x0112] == 6
    assert np.array_equal(decode_image(buffer.getvalue()), rgb)  # the stored grid, not turned
