"""Image-quality metrics for satellite -> map translation.

All functions take batches of images as tensors shaped (N, 3, H, W) in the
model's range [-1, 1] (a single (3, H, W) image is also accepted). Inputs of
any float dtype (bf16 included) are cast to float32 before computing.

Scales, chosen to match what each number is usually reported on:
  L1              [-1, 1]   (what the pix2pix L1 loss measures)
  PSNR, SSIM      [0, 1]    (data_range 1)
  RMSE            0..255    after quantising to uint8, as maps benchmarks do
  pixel accuracy  0..255    after quantising to uint8

PSNR of identical images is +inf (the MSE is zero); it is reported as such.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio

from pix2pix.model.palette import palette_classes
from pix2pix.model.ranges import to_model_range, to_uint8, to_unit

_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5  # an 11-pixel Gaussian window, as in Wang et al. 2004 and torchmetrics
_SSIM_C1, _SSIM_C2 = 0.01**2, 0.03**2  # (k * data range 1) ** 2


def _as_batch(images: Tensor) -> Tensor:
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images shaped (N, 3, H, W), got {tuple(images.shape)}")
    return images


def _pair(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    pred, target = _as_batch(pred), _as_batch(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    return pred.detach().float(), target.detach().float()


PSNR_CAP_DB = 100.0  # an exact match (a flat all-sea tile) would make the mean +inf


def _psnr_per_image(pred: Tensor, target: Tensor) -> Tensor:
    return peak_signal_noise_ratio(
        to_unit(pred), to_unit(target), data_range=1.0, reduction="none", dim=(1, 2, 3)
    ).reshape(-1).clamp(max=PSNR_CAP_DB)


def _gaussian_window(images: Tensor) -> Tensor:
    """Each channel blurred by the SSIM window, the same size out (reflect-padded). Depthwise,
    channels last: on CPUs ~10x faster than one channel per batch entry, as torchmetrics runs it."""
    offsets = torch.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=images.dtype, device=images.device)
    weights = torch.exp(-(offsets / _SSIM_SIGMA) ** 2 / 2)
    weights = weights / weights.sum()
    channels = images.shape[1]
    kernel = (weights[:, None] * weights[None, :]).expand(channels, 1, -1, -1).contiguous()
    padded = F.pad(images, (_SSIM_RADIUS,) * 4, mode="reflect").contiguous(memory_format=torch.channels_last)
    return F.conv2d(padded, kernel, groups=channels)


def _ssim_per_image(pred: Tensor, target: Tensor) -> Tensor:
    """Mean SSIM of each image on [0, 1], as torchmetrics defines it (Gaussian window, sigma
    1.5, reflect padding, variances clamped at 0)."""
    pred, target = to_unit(pred), to_unit(target)
    moments = _gaussian_window(torch.cat((pred, target, pred * pred, target * target, pred * target), dim=1))
    mu_pred, mu_target, pred_sq, target_sq, cross = moments.split(pred.shape[1], dim=1)
    mu_pred_sq, mu_target_sq, mu_cross = mu_pred * mu_pred, mu_target * mu_target, mu_pred * mu_target
    var_pred = (pred_sq - mu_pred_sq).clamp(min=0)
    var_target = (target_sq - mu_target_sq).clamp(min=0)
    covariance = cross - mu_cross
    index = ((2 * mu_cross + _SSIM_C1) * (2 * covariance + _SSIM_C2)) / (
        (mu_pred_sq + mu_target_sq + _SSIM_C1) * (var_pred + var_target + _SSIM_C2))
    return index.reshape(index.shape[0], -1).mean(dim=1)


def _squared_error_255(pred: Tensor, target: Tensor) -> Tensor:
    return (to_uint8(pred).double() - to_uint8(target).double()) ** 2


def _correct_pixels(pred: Tensor, target: Tensor, tolerance: float) -> Tensor:
    diff = (to_uint8(pred).int() - to_uint8(target).int()).abs()
    return diff.amax(dim=1) < tolerance  # (N, H, W)


def l1(pred: Tensor, target: Tensor) -> float:
    """Mean absolute error on the [-1, 1] scale."""
    pred, target = _pair(pred, target)
    return (pred - target).abs().mean().item()


def psnr(pred: Tensor, target: Tensor) -> float:
    """Mean over images of per-image PSNR in dB on [0, 1], each capped at PSNR_CAP_DB."""
    pred, target = _pair(pred, target)
    return _psnr_per_image(pred, target).double().mean().item()


def ssim(pred: Tensor, target: Tensor) -> float:
    """Mean over images of per-image SSIM on [0, 1]."""
    pred, target = _pair(pred, target)
    return _ssim_per_image(pred, target).double().mean().item()


def rmse(pred: Tensor, target: Tensor) -> float:
    """Root mean squared error on the 0..255 scale, over all pixels and channels."""
    pred, target = _pair(pred, target)
    return math.sqrt(_squared_error_255(pred, target).mean().item())


def pixel_accuracy(pred: Tensor, target: Tensor, tolerance: float = 5) -> float:
    """Fraction of pixels whose largest channel difference (0..255) is below `tolerance`."""
    pred, target = _pair(pred, target)
    return _correct_pixels(pred, target, tolerance).double().mean().item()


def confusion_counts(pred: Tensor, target: Tensor, palette: Mapping,
                     pred_cls: Tensor | None = None) -> Tensor:
    """Pixel counts by (target class, predicted class), nearest palette colour each: float64 (K, K)."""
    k = len(palette)
    pred_cls = (palette_classes(pred, palette) if pred_cls is None else pred_cls).reshape(-1)
    target_cls = palette_classes(target, palette).reshape(-1)
    return torch.bincount(target_cls * k + pred_cls, minlength=k * k).reshape(k, k).double()


def intersections_unions(confusion: Tensor) -> tuple[Tensor, Tensor]:
    """Per-class intersection and union counts from (..., K, K) confusion counts: each (..., K)."""
    intersection = confusion.diagonal(dim1=-2, dim2=-1)
    return intersection, confusion.sum(-1) + confusion.sum(-2) - intersection


def iou_counts(pred: Tensor, target: Tensor, palette: Mapping,
               pred_cls: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-class intersection and union pixel counts, each a float64 tensor of length K."""
    return intersections_unions(confusion_counts(pred, target, palette, pred_cls))


def class_report(confusion: Tensor, names: list[str]) -> dict[str, dict]:
    """What a confusion matrix (target rows, predicted columns) says per class: the share of each
    target class's pixels predicted as each class, its precision and recall (named apart from
    the numeric precision a model runs at), and each class's share of
    the target and of the predicted pixels (a class predicted far more often than it occurs is
    where the false positives are)."""
    counts = confusion.tolist()
    rows, columns = confusion.sum(1).tolist(), confusion.sum(0).tolist()
    total = max(sum(rows), 1)

    def shares(values: list[float], of: list[float]) -> dict[str, float]:
        return {name: round(value / whole, 4) for name, value, whole in zip(names, values, of) if whole > 0}

    correct = [counts[k][k] for k in range(len(names))]
    return {
        "confusion": {name: shares(counts[k], [rows[k]] * len(names)) for k, name in enumerate(names) if rows[k] > 0},
        "class_precision": shares(correct, columns), "class_recall": shares(correct, rows),
        "target_share": shares(rows, [total] * len(names)), "predicted_share": shares(columns, [total] * len(names)),
    }


def _iou_from_counts(names, intersections, unions) -> dict[str, float]:
    # Classes absent from both pred and target (union 0) are left out, so no NaNs.
    result = {name: i / u for name, i, u in zip(names, intersections, unions) if u > 0}
    if result:
        result["mIoU"] = sum(result.values()) / len(result)
    return result


def class_iou(pred: Tensor, target: Tensor, palette: Mapping[str, tuple[int, int, int]]) -> dict[str, float]:
    """Per-class IoU over all pixels of the batch, plus "mIoU" (mean over classes present).

    Classes absent from both pred and target are omitted (no NaN entries).
    """
    intersection, union = iou_counts(pred, target, palette)
    return _iou_from_counts(palette.keys(), intersection.tolist(), union.tolist())


def bootstrap_iou(intersections: np.ndarray, unions: np.ndarray, names: list[str], samples: int = 2000,
                  level: float = 0.95, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of each class IoU and of the mIoU, resampling pairs.

    ``intersections``/``unions``: (pairs, K) pixel counts of each pair (``iou_counts``). A
    resample's IoU sums the counts of its pairs, as the whole-split IoU does; classes absent
    from a resample are left out of its mIoU. Rare classes (roads) come out wide.
    """
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(intersections), size=(samples, len(intersections)))
    inter, union = intersections[picks].sum(axis=1), unions[picks].sum(axis=1)  # (samples, K)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, np.nan)
    tails = [50 * (1 - level), 50 * (1 + level)]
    result = {name: tuple(float(v) for v in np.nanpercentile(iou[:, k], tails))
              for k, name in enumerate(names) if unions[:, k].sum() > 0}
    if result:
        result["mIoU"] = tuple(float(v) for v in np.percentile(np.nanmean(iou, axis=1), tails))
    return result


def add_totals(*totals: Mapping[str, float]) -> dict[str, float]:
    """Element-wise sum of `MetricAccumulator.totals()` dicts (e.g. from several workers)."""
    summed: dict[str, float] = {}
    for part in totals:
        for key, value in part.items():
            summed[key] = summed.get(key, 0.0) + float(value)
    return summed


class MetricAccumulator:
    """Accumulates metric sums and counts over many batches.

    `totals()` is a flat dict of floats that is additive: totals from
    distributed workers can be summed key by key (`add_totals`, or an
    all-reduce of the values in key order) and passed to `summarize`.
    """

    def __init__(self, palette: Mapping[str, tuple[int, int, int]] | None = None, tolerance: float = 5):
        self.palette = dict(palette) if palette is not None else None
        self.tolerance = tolerance
        self._totals: dict[str, float] = {
            "l1_sum": 0.0,
            "value_count": 0.0,  # pixels x channels
            "squared_error_255_sum": 0.0,
            "correct_pixels": 0.0,
            "pixel_count": 0.0,
            "psnr_sum": 0.0,
            "ssim_sum": 0.0,
            "image_count": 0.0,
        }
        if self.palette:
            self._totals["snapped_correct_pixels"] = 0.0
        for name in self.palette or ():
            self._totals[f"intersection/{name}"] = 0.0
            self._totals[f"union/{name}"] = 0.0

    def update(self, pred: Tensor, target: Tensor) -> None:
        pred, target = _pair(pred, target)
        t = self._totals
        t["l1_sum"] += (pred - target).abs().double().sum().item()
        t["value_count"] += pred.numel()
        t["squared_error_255_sum"] += _squared_error_255(pred, target).sum().item()
        correct = _correct_pixels(pred, target, self.tolerance)
        t["correct_pixels"] += correct.sum().item()
        t["pixel_count"] += correct.numel()
        t["psnr_sum"] += _psnr_per_image(pred, target).double().sum().item()
        t["ssim_sum"] += _ssim_per_image(pred, target).double().sum().item()
        t["image_count"] += pred.shape[0]
        if self.palette:
            pred_cls = palette_classes(pred, self.palette)
            colours = to_model_range(torch.tensor(list(self.palette.values())))
            snapped = colours.to(pred.device)[pred_cls].permute(0, 3, 1, 2)
            t["snapped_correct_pixels"] += _correct_pixels(snapped, target, self.tolerance).sum().item()
            intersection, union = iou_counts(pred, target, self.palette, pred_cls)
            for name, i, u in zip(self.palette, intersection.tolist(), union.tolist()):
                t[f"intersection/{name}"] += i
                t[f"union/{name}"] += u

    def totals(self) -> dict[str, float]:
        return dict(self._totals)

    @staticmethod
    def summarize(totals: Mapping[str, float]) -> dict[str, float]:
        """Dataset-level metrics from (possibly summed) totals.

        L1, RMSE and pixel accuracy are pixel-weighted; PSNR and SSIM are means
        of per-image values. With a palette, adds "IoU/<class>" for classes seen
        in pred or target and "mIoU" over those.
        """
        if totals.get("image_count", 0) <= 0:
            raise ValueError("no images were accumulated")
        result = {
            "L1": totals["l1_sum"] / totals["value_count"],
            "PSNR": totals["psnr_sum"] / totals["image_count"],
            "SSIM": totals["ssim_sum"] / totals["image_count"],
            "RMSE": math.sqrt(totals["squared_error_255_sum"] / totals["value_count"]),
            "pixel_accuracy": totals["correct_pixels"] / totals["pixel_count"],
        }
        if "snapped_correct_pixels" in totals:  # pixel accuracy of the output snapped to the palette
            result["pixel_accuracy_snapped"] = totals["snapped_correct_pixels"] / totals["pixel_count"]
        names = [key.split("/", 1)[1] for key in totals if key.startswith("intersection/")]
        ious = _iou_from_counts(
            names,
            [totals[f"intersection/{n}"] for n in names],
            [totals[f"union/{n}"] for n in names],
        )
        for name, value in ious.items():
            result[name if name == "mIoU" else f"IoU/{name}"] = value
        return result
