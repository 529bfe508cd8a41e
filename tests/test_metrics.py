import math

import numpy as np
import pytest
import torch

from pix2pix.model.metrics import (
    PSNR_CAP_DB,
    MetricAccumulator,
    add_totals,
    class_iou,
    class_report,
    confusion_counts,
    l1,
    pixel_accuracy,
    psnr,
    rmse,
    ssim,
)
from pix2pix.model.palette import RECIFE_PALETTE, palette_classes, snap_to_palette
from pix2pix.model.ranges import to_uint8, to_unit

TWO_CLASSES = {"dark": (0, 0, 0), "light": (255, 255, 255)}


def from_uint8(values: torch.Tensor) -> torch.Tensor:
    """0..255 -> the model's [-1, 1] range."""
    return values.float() / 127.5 - 1.0


def paint(classes: torch.Tensor, palette) -> torch.Tensor:
    """Class map (N, H, W) -> [-1, 1] image (N, 3, H, W) in palette colours."""
    colours = torch.tensor(list(palette.values()), dtype=torch.float32)
    return from_uint8(colours[classes].permute(0, 3, 1, 2))


def random_images(seed: int, n: int = 2, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=generator) * 2 - 1


def noisy_map(seed: int, n: int = 2, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    classes = torch.randint(len(RECIFE_PALETTE), (n, size, size), generator=generator)
    noise = torch.randn(n, 3, size, size, generator=generator) * 0.05
    return (paint(classes, RECIFE_PALETTE) + noise).clamp(-1, 1)


def test_to_uint8_round_trips_and_clamps():
    values = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(1, 3, 16, 16)
    assert torch.equal(to_uint8(from_uint8(values)), values)
    assert to_uint8(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]


def test_identical_images_score_perfectly():
    images = noisy_map(0, size=64)
    assert l1(images, images) == 0.0
    assert psnr(images, images) == PSNR_CAP_DB  # zero MSE: capped, so one exact tile cannot make a mean +inf
    assert ssim(images, images) == pytest.approx(1.0, abs=1e-5)
    assert rmse(images, images) == 0.0
    assert pixel_accuracy(images, images) == 1.0
    assert class_iou(images, images, RECIFE_PALETTE)["mIoU"] == 1.0


def test_l1_of_constant_offset_is_the_offset():
    target = random_images(1) * 0.5
    assert l1(target + 0.25, target) == pytest.approx(0.25, abs=1e-6)


def test_psnr_of_constant_offset():
    target = random_images(2) * 0.5
    # 0.2 on [-1, 1] is 0.1 on [0, 1]: MSE 0.01 -> 20 dB
    assert psnr(target + 0.2, target) == pytest.approx(20.0, abs=1e-3)


def test_rmse_on_0_255_scale():
    target = torch.full((1, 3, 8, 8), 100, dtype=torch.uint8)
    pred = target.clone()
    pred[:, 0] = 110  # one channel off by 10 everywhere
    assert rmse(from_uint8(pred), from_uint8(target)) == pytest.approx(math.sqrt(100 / 3))


def test_pixel_accuracy_tolerance_boundary():
    target = torch.full((1, 3, 2, 2), 100, dtype=torch.uint8)
    pred = target.clone()
    pred[0, 1, 0, 0] = 104  # off by 4: correct
    pred[0, 2, 0, 1] = 95  # off by 5: wrong
    pred[0, 0, 1, 0] = 105  # off by 5: wrong
    assert pixel_accuracy(from_uint8(pred), from_uint8(target)) == 0.5
    assert pixel_accuracy(from_uint8(pred), from_uint8(target), tolerance=6) == 1.0


def test_palette_classes_exact_and_noisy_colours():
    colours = torch.tensor(list(RECIFE_PALETTE.values()), dtype=torch.uint8)  # (K, 3)
    exact = colours.T.reshape(1, 3, 1, -1)
    assert palette_classes(exact, RECIFE_PALETTE).tolist() == [[list(range(len(RECIFE_PALETTE)))]]
    # float [-1, 1] input gives the same answer as uint8
    assert torch.equal(palette_classes(from_uint8(exact), RECIFE_PALETTE), palette_classes(exact, RECIFE_PALETTE))

    noisy = torch.tensor([[10, 120, 240], [230, 20, 15], [120, 135, 125], [240, 240, 30]], dtype=torch.uint8)
    names = list(RECIFE_PALETTE)
    got = palette_classes(noisy.T.reshape(1, 3, 1, -1), RECIFE_PALETTE)[0, 0].tolist()
    assert [names[i] for i in got] == ["water", "building", "road", "soil"]


def test_palette_classes_are_the_nearest_colour_for_any_colour_ties_to_the_earlier_entry():
    """Against a brute-force squared distance (numpy's argmin takes the first of equals) over
    random colours, the palette's own, and the midpoints between every two of them (ties)."""
    palette = {**RECIFE_PALETTE, "grey twin": (127, 127, 127), "dark": (1, 2, 3)}  # a repeated colour ties too
    entries = np.array(list(palette.values()), np.int64)
    rng = np.random.default_rng(0)
    midpoints = [(a + b) // 2 for a in entries for b in entries] + [(a + b + 1) // 2 for a in entries for b in entries]
    colours = np.concatenate([rng.integers(0, 256, (200_000, 3)), entries, midpoints]).astype(np.uint8)
    expected = ((colours[:, None, :].astype(np.int64) - entries[None]) ** 2).sum(-1).argmin(axis=1)
    got = palette_classes(torch.from_numpy(colours.T.copy()).reshape(1, 3, 1, -1), palette)[0, 0]
    assert got.dtype == torch.int64 and np.array_equal(got.numpy(), expected)


def test_class_iou_hand_computed():
    target = torch.tensor([[[0, 0], [1, 1]]])
    pred = torch.tensor([[[0, 1], [1, 1]]])
    result = class_iou(paint(pred, TWO_CLASSES), paint(target, TWO_CLASSES), TWO_CLASSES)
    # dark: 1 pixel in both, 2 in either; light: 2 in both, 3 in either
    assert result["dark"] == pytest.approx(1 / 2)
    assert result["light"] == pytest.approx(2 / 3)
    assert result["mIoU"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_class_iou_leaves_out_absent_classes():
    target = torch.zeros(1, 4, 4, dtype=torch.long)  # only "water"
    result = class_iou(paint(target, RECIFE_PALETTE), paint(target, RECIFE_PALETTE), RECIFE_PALETTE)
    assert result == {"water": 1.0, "mIoU": 1.0}


def test_class_report_hand_computed():
    three = {"dark": (0, 0, 0), "grey": (127, 127, 127), "light": (255, 255, 255)}
    target = torch.tensor([[[0, 0, 0, 1], [2, 2, 2, 2]]])  # 3 dark, 1 grey, 4 light
    pred = torch.tensor([[[0, 1, 1, 1], [2, 2, 2, 1]]])  # grey predicted 4 times, right once
    confusion = confusion_counts(paint(pred, three), paint(target, three), three)
    assert confusion.tolist() == [[1, 2, 0], [0, 1, 0], [0, 1, 3]]
    report = class_report(confusion, list(three))
    assert report["confusion"]["dark"] == pytest.approx({"dark": 1 / 3, "grey": 2 / 3, "light": 0}, abs=1e-4)
    assert report["class_precision"] == pytest.approx({"dark": 1, "grey": 1 / 4, "light": 1}, abs=1e-4)
    assert report["class_recall"] == pytest.approx({"dark": 1 / 3, "grey": 1, "light": 3 / 4}, abs=1e-4)
    assert report["target_share"] == pytest.approx({"dark": 3 / 8, "grey": 1 / 8, "light": 4 / 8}, abs=1e-4)
    assert report["predicted_share"] == pytest.approx({"dark": 1 / 8, "grey": 4 / 8, "light": 3 / 8}, abs=1e-4)
    intersection_over_union = class_iou(paint(pred, three), paint(target, three), three)
    assert intersection_over_union["grey"] == pytest.approx(1 / 4)  # the same counts as the IoU


def expected_on(pred, target):
    expected = {
        "L1": l1(pred, target),
        "PSNR": psnr(pred, target),
        "SSIM": ssim(pred, target),
        "RMSE": rmse(pred, target),
        "pixel_accuracy": pixel_accuracy(pred, target),
        "pixel_accuracy_snapped": pixel_accuracy(from_uint8(snap_to_palette(pred, RECIFE_PALETTE)), target),
    }
    for name, value in class_iou(pred, target, RECIFE_PALETTE).items():
        expected[name if name == "mIoU" else f"IoU/{name}"] = value
    return expected


def assert_metrics_match(got, expected):
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_accumulator_over_batches_equals_concatenated_batch():
    batches = [(noisy_map(10), noisy_map(11)), (noisy_map(12, n=3), noisy_map(13, n=3))]
    accumulator = MetricAccumulator(RECIFE_PALETTE)
    for pred, target in batches:
        accumulator.update(pred, target)
    pred = torch.cat([p for p, _ in batches])
    target = torch.cat([t for _, t in batches])
    assert_metrics_match(MetricAccumulator.summarize(accumulator.totals()), expected_on(pred, target))


def test_totals_from_two_workers_add_up():
    batches = [(noisy_map(20), noisy_map(21)), (noisy_map(22), noisy_map(23))]
    workers = [MetricAccumulator(RECIFE_PALETTE) for _ in batches]
    single = MetricAccumulator(RECIFE_PALETTE)
    for worker, (pred, target) in zip(workers, batches):
        worker.update(pred, target)
        single.update(pred, target)
    totals = [w.totals() for w in workers]
    assert all(isinstance(v, float) for v in totals[0].values())
    # what an all-reduce of the values in key order would produce
    reduced = dict(zip(totals[0], (a + b for a, b in zip(totals[0].values(), totals[1].values()))))
    assert reduced == add_totals(*totals)
    assert_metrics_match(MetricAccumulator.summarize(reduced), MetricAccumulator.summarize(single.totals()))


def test_accumulator_without_palette_and_empty():
    accumulator = MetricAccumulator()
    with pytest.raises(ValueError):
        MetricAccumulator.summarize(accumulator.totals())
    accumulator.update(random_images(30), random_images(31))
    assert set(MetricAccumulator.summarize(accumulator.totals())) == {"L1", "PSNR", "SSIM", "RMSE", "pixel_accuracy"}


def test_bf16_inputs():
    pred, target = noisy_map(40, size=64), noisy_map(41, size=64)
    pred16, target16 = pred.bfloat16(), target.bfloat16()
    pred32, target32 = pred16.float(), target16.float()
    for metric in (l1, psnr, ssim, rmse, pixel_accuracy):
        got = metric(pred16, target16)
        assert math.isfinite(got)
        assert got == pytest.approx(metric(pred32, target32), rel=1e-6)
    accumulator = MetricAccumulator(RECIFE_PALETTE)
    accumulator.update(pred16, target16)
    assert math.isfinite(MetricAccumulator.summarize(accumulator.totals())["SSIM"])


def test_ssim_on_tiny_images():
    images = random_images(50, size=8)
    assert ssim(images, images) == pytest.approx(1.0, abs=1e-5)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        l1(random_images(60, size=8), random_images(61, size=16))


def test_snapping_to_the_palette_gives_exact_class_colours_and_its_own_accuracy():
    target = torch.tensor(RECIFE_PALETTE["water"], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 16, 16).clone()
    target[:, :, :8, :8] = torch.tensor(RECIFE_PALETTE["road"], dtype=torch.uint8).view(3, 1, 1)
    pred = target.clone().int()
    pred[:, :, 8:, 8:] += torch.tensor([20, -20, -20]).view(3, 1, 1)  # drifted: still water, not within 5
    pred = pred.clamp(0, 255).to(torch.uint8)
    snapped = snap_to_palette(pred, RECIFE_PALETTE)
    assert torch.equal(snapped, target)
    accumulator = MetricAccumulator(palette=RECIFE_PALETTE)
    accumulator.update(from_uint8(pred), from_uint8(target))
    summary = MetricAccumulator.summarize(accumulator.totals())
    assert summary["pixel_accuracy"] == 0.75 and summary["pixel_accuracy_snapped"] == 1.0


def test_bootstrap_intervals_hold_the_estimate_and_shrink_to_it_for_identical_pairs():
    from pix2pix.model.metrics import bootstrap_iou

    rng = np.random.default_rng(0)
    unions = rng.integers(50, 100, size=(40, 3)).astype(float)
    intersections = np.floor(unions * rng.uniform(0.2, 0.8, size=(40, 3)))
    unions[:, 2] = intersections[:, 2] = 0  # a class never seen
    intervals = bootstrap_iou(intersections, unions, ["a", "b", "c"])
    assert set(intervals) == {"a", "b", "mIoU"}
    for k, name in enumerate("ab"):
        estimate = intersections[:, k].sum() / unions[:, k].sum()
        low, high = intervals[name]
        assert low < estimate < high and high - low < 0.2
    same = bootstrap_iou(np.full((10, 1), 30.0), np.full((10, 1), 60.0), ["a"])
    assert same["a"] == pytest.approx((0.5, 0.5)) and same["mIoU"] == pytest.approx((0.5, 0.5))


@pytest.mark.parametrize("size", [8, 64])
def test_ssim_is_torchmetrics_ssim(size):
    from torchmetrics.functional.image import structural_similarity_index_measure

    pred, target = random_images(70, n=3, size=size), random_images(71, n=3, size=size)
    target[1] = pred[1] * 0.8 + target[1] * 0.2  # one pair alike: SSIM far from 0
    reference = structural_similarity_index_measure(to_unit(pred), to_unit(target), data_range=1.0,
                                                    reduction="none")
    mine = torch.tensor([ssim(pred[i], target[i]) for i in range(3)])
    assert torch.allclose(mine, reference, atol=1e-5), (mine, reference)
    assert mine[1] > 0.5
