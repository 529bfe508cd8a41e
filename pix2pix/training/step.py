"""The pix2pix training step and its state: pure PyTorch, the same on one process or many.

Distribution enters only through ``wrap`` (e.g. DistributedDataParallel): the generator is
wrapped as is; the discriminator is wrapped together with its two calls of the D step
(``DiscriminatorPair``), so each wrapped module runs exactly one forward and one backward per
step. The G step calls the bare discriminator with its parameters frozen, so no gradient
reaches D there and DDP never sees a parameter marked ready twice.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import nn

from pix2pix.errors import ConfigError
from pix2pix.hashing import stable_seed
from pix2pix.images import image_grid
from pix2pix.model.export import ExportInfo
from pix2pix.model.inference import memory_format, model_inputs, run_generator
from pix2pix.model.losses import PaletteTerm, discriminator_loss, generator_loss
from pix2pix.model.metrics import MetricAccumulator
from pix2pix.model.networks import (
    MAX_IMAGE_SIZE,
    NORM_KINDS,
    UPSAMPLE_KINDS,
    DiscriminatorConfig,
    GeneratorConfig,
    PatchDiscriminator,
    UNetGenerator,
    check_image_size,
)
from pix2pix.model.palette import Palette
from pix2pix.model.precision import PRECISIONS, autocast, resolve_precision
from pix2pix.model.ranges import to_uint8

LOSS_NAMES = ("G_GAN", "G_L1", "D_real", "D_fake")

# Widths, Adam learning rate and the palette term's weight; the rest is the paper's recipe either
# way (U-Net + 70x70 PatchGAN, lambda 100, batch 1, beta1 0.5) with instance norm.
RECIPES: dict[str, dict[str, float | str]] = {
    "paper": {"ngf": 64, "ndf": 64, "lr": 2e-4},
    # Half the width and twice the learning rate (Adam's step scaled with 1/width, as in muP):
    # several times the pairs per second on a CPU, and on Recife better than the paper's recipe
    # at equal wall time (figures: bench/README.md, Quality). Without the doubled rate the
    # half-width model learns far less per pair. With a palette, the class-balanced palette term
    # (losses.PaletteTerm) at weight 3: on Recife it takes building IoU from 0 to ~0.5; and a
    # resize-convolution decoder, better with or without it (bench/README.md, Quality).
    # A discriminator of half that width again (ndf 16): 1.3x the pairs per second on a CPU without
    # native bf16 and no worse at equal pairs (bench/README.md, Quality).
    "compact": {"ngf": 32, "ndf": 16, "lr": 4e-4, "palette_weight": 3.0, "upsample": "resize"},
}


FLIPS = ("horizontal", "square")  # augmentation.paired_transform's training flips

# The embedded demo: small enough to train in a few minutes on 2 cores, same recipe otherwise.
DEMO_SETTINGS = {"image_size": 128, "epochs": 2, "epochs_decay": 1, "batch_size": 4}

# On a GPU, batch 1 (the paper's) is bound by kernel launches (~400 a step), and larger batches
# give several times the pairs per second. Without --batch-size a GPU run takes this many pairs
# a step per worker, and without --lr the recipe's rate times sqrt(GPU_BATCH_SIZE) (the square-root
# rule for Adam). Screened on a CPU at 4x the pairs of batch 1, the least a GPU's speed-up gives
# in equal time (bench/README.md, Quality, "Batch size on GPUs").
GPU_BATCH_SIZE = 16


def recipe_config(recipe: str, demo: bool = False, gpu: bool = False, **chosen) -> TrainConfig:
    """A recipe's widths and learning rate, the demo's sizes when ``demo``, the GPU batch and its
    learning rate when ``gpu``, then what the user chose (None: not chosen)."""
    overrides = {name: value for name, value in chosen.items() if value is not None}
    settings = {**RECIPES[recipe], **(DEMO_SETTINGS if demo else {})}
    if gpu and not demo and "batch_size" not in overrides:
        settings.update(batch_size=GPU_BATCH_SIZE, lr=settings["lr"] * math.sqrt(GPU_BATCH_SIZE))
    return TrainConfig(**{**settings, **overrides})


def default_recipe(use_gpu: bool) -> str:
    """compact on CPUs, where it was measured better; the paper's widths on GPUs."""
    return "paper" if use_gpu else "compact"


# Options that lost their screens (bench/README.md) and were removed: name -> (flag, off value).
RETIRED_OPTIONS = {"palette_output": ("--palette-output", False), "palette_iou_weight": ("--palette-iou-weight", 0.0)}


def hyperparameter(default, help: str, **flag):
    """A TrainConfig field and its command-line flag: ``help`` may name ``{default}``; ``flag``
    holds argparse's extras (choices). Read by pix2pix.cli.add_field_flags."""
    return field(default=default, metadata={"help": help.format(default=default), **flag})


@dataclass(frozen=True)
class TrainConfig:
    """The recipe: every field is a flag of jobs/train.py (same name, dashes for underscores)."""

    epochs: int = hyperparameter(100, "epochs at the initial lr (default: {default})")
    epochs_decay: int = hyperparameter(100, "then epochs of linear decay to 0 (default: {default})")
    batch_size: int = hyperparameter(1, "per worker (default: {default} on CPUs; on GPUs 16, with the lr x 4)")
    lr: float = hyperparameter(2e-4, "Adam learning rate, G and D (default: the recipe's)")
    beta1: float = hyperparameter(0.5, "Adam beta1 (default: {default})")
    lambda_l1: float = hyperparameter(100.0, "weight of the L1 term (default: {default})")
    # Training crops the pair resized to 286/256 of it; G and D are fully convolutional.
    image_size: int = hyperparameter(
        256, "pairs are resized to this for validation and inference (default: {default})")
    crop_size: int | None = hyperparameter(
        None, "training crop of the pair resized to 286/256 of the image size (default: the image size)")
    flips: str = hyperparameter(
        "horizontal", "training flips: the paper's random horizontal flip, or square: one of the eight rotations "
        "and reflections of the square, for tiles that have no up (default: {default})", choices=FLIPS)
    norm: str = hyperparameter(
        "instance", "instance keeps tiles independent of batch mates; batch is the paper's (default: {default})",
        choices=NORM_KINDS)
    ngf: int = hyperparameter(64, "generator width (default: the recipe's)")
    ndf: int = hyperparameter(64, "discriminator width (default: the recipe's)")
    depth: int | None = hyperparameter(None, "U-Net down steps (default: log2(image size), max 8)")
    dropout: float = hyperparameter(0.5, "generator dropout (default: {default})")
    precision: str = hyperparameter(
        "auto", "auto: bf16 on AMX CPUs and Ampere+ GPUs, fp16 (with GradScaler) on older GPUs, else fp32 "
        "(default: {default})", choices=("auto", *PRECISIONS))
    channels_last: bool | None = hyperparameter(  # None: inference.memory_format decides
        None, "NHWC memory layout (default: NCHW for fp32 on CPUs, where it measured faster; channels_last for "
        "bf16 and on GPUs)")
    seed: int = hyperparameter(0, "weight init and shuffling seed")
    upsample: str = hyperparameter(
        "transposed", "decoder upsampling: transposed convolutions (the paper's) or resize-convolution (no "
        "checkerboard) (default: the recipe's: resize in compact, transposed in paper)", choices=UPSAMPLE_KINDS)
    ema_decay: float = hyperparameter(
        0.0, "validate and export an exponential moving average of the generator's weights with this decay; "
        "0: off (default: {default})")
    palette_weight: float = hyperparameter(  # the class-balanced palette term (losses.PaletteTerm)
        0.0, "with --palette: weight of a class-balanced cross-entropy over the palette's classes beside GAN + "
        f"L1; 0: off (default: the recipe's: {RECIPES['compact']['palette_weight']:g} in compact, 0 in paper)")
    palette_temperature: float = hyperparameter(
        0.1, "the palette term's softmax temperature over -(squared distance to each colour), colours in "
        "[-1, 1] (default: {default:g})")
    palette_balance: float = hyperparameter(
        1.0, "the power of the palette term's class weights, (median class frequency / frequency) ** P: "
        "0 unweighted, 1 balanced, > 1 rare classes first (default: {default:g})")

    @classmethod
    def from_dict(cls, saved: dict) -> TrainConfig:
        """A configuration saved with a checkpoint. Runs saved before an option was retired record
        it at its off value and keep resuming; a run that used one is refused (ConfigError)."""
        saved = dict(saved)
        for name, (flag, off) in RETIRED_OPTIONS.items():
            if saved.pop(name, off) != off:
                raise ConfigError(f"this run used {flag}, which was retired (it lost its screens, bench/README.md): "
                                 "use another --name to start a new run")
        return cls(**saved)

    @property
    def generator_depth(self) -> int:
        trained_at = self.crop_size or self.image_size
        return self.depth if self.depth is not None else min(8, max(2, int(math.log2(trained_at))))

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.epochs_decay

    def generator_config(self) -> GeneratorConfig:
        return GeneratorConfig(ngf=self.ngf, depth=self.generator_depth, norm=self.norm, dropout=self.dropout,
                               upsample=self.upsample)

    def discriminator_config(self) -> DiscriminatorConfig:
        return DiscriminatorConfig(ndf=self.ndf, norm=self.norm)

    def validate(self) -> None:
        """Raise ConfigError with one readable line for a configuration that cannot train."""
        if not 0 < self.image_size <= MAX_IMAGE_SIZE:
            raise ConfigError(f"the image size must be between 1 and {MAX_IMAGE_SIZE}, got {self.image_size}")
        if self.crop_size is not None and not 0 < self.crop_size <= self.image_size:
            raise ConfigError(f"the crop size must be between 1 and the image size ({self.image_size})")
        try:  # the networks' own checks, in the words of the flags
            check_image_size(self.image_size, self.generator_depth)
            if self.crop_size is not None:
                check_image_size(self.crop_size, self.generator_depth, "crop size")
            self.generator_config(), self.discriminator_config()
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if self.flips not in FLIPS:
            raise ConfigError(f"flips must be one of {', '.join(FLIPS)}, not {self.flips!r}")
        for name in ("epochs", "epochs_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0")
        if self.total_epochs < 1:
            raise ConfigError("epochs + epochs_decay must be at least 1")
        if self.batch_size < 1 or self.lr <= 0 or not 0 <= self.beta1 < 1 or self.lambda_l1 < 0:
            raise ConfigError("batch size must be >= 1, lr > 0, 0 <= beta1 < 1 and lambda_l1 >= 0")
        if not 0 <= self.ema_decay < 1 or min(self.palette_weight, self.palette_balance) < 0 \
                or self.palette_temperature <= 0:
            raise ConfigError("the EMA decay must be in [0, 1), the palette weights and balance >= 0 and its "
                              "temperature > 0")

    def to_dict(self) -> dict:
        return asdict(self)


class DiscriminatorPair(nn.Module):
    """The D step's two calls (real and fake pairs) as one forward."""

    def __init__(self, discriminator: PatchDiscriminator):
        super().__init__()
        self.discriminator = discriminator

    def forward(self, source, target, fake):
        return self.discriminator(source, target), self.discriminator(source, fake)


def identity(module: nn.Module) -> nn.Module:
    return module


@torch.no_grad()
def update_average(average: nn.Module, current: nn.Module, decay: float, step: int) -> None:
    """One step of an exponential moving average of G's weights (Yazıcı et al., ICLR 2019) with
    the usual warm-up: the decay is min(decay, (1 + step) / (10 + step)), so the first random
    weights are forgotten within a few hundred steps. One fused pass over the weights; buffers
    (batch norm's statistics) are copied."""
    keep = min(decay, (1.0 + step) / (10.0 + step))
    torch._foreach_lerp_(list(average.parameters()), list(current.parameters()), 1.0 - keep)
    for mine, theirs in zip(average.buffers(), current.buffers()):
        mine.copy_(theirs)


class Pix2Pix:
    """Generator, discriminator, their optimizers, and one training step (the lr is set by its caller's
    schedule, pix2pix/training/schedule.py)."""

    def __init__(self, config: TrainConfig, device: torch.device | str = "cpu",
                 wrap: Callable[[nn.Module], nn.Module] = identity, palette: Palette | None = None,
                 class_weights: list[float] | None = None):
        """``palette`` and ``class_weights`` (palette order; 1 each if None) turn on the palette
        term when ``config.palette_weight`` > 0."""
        config.validate()
        self.config = config
        self.device = torch.device(device)
        self.precision = resolve_precision(config.precision, self.device)
        self.memory_format = memory_format(config.channels_last, self.device, self.precision)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels once
        torch.manual_seed(config.seed)  # identical initial weights on every worker
        self.palette = palette
        self.generator = UNetGenerator(config.generator_config()).to(
            self.device, memory_format=self.memory_format)
        self.discriminator = PatchDiscriminator(config.discriminator_config()).to(
            self.device, memory_format=self.memory_format)
        self.generator_average = copy.deepcopy(self.generator).requires_grad_(False) if config.ema_decay else None
        self.palette_term = None
        if config.palette_weight > 0 and palette:
            weights = class_weights if class_weights is not None else [1.0] * len(palette)
            self.palette_term = PaletteTerm.build(palette, weights, config.palette_weight,
                                                  config.palette_temperature, self.device)
        self.generator_step = wrap(self.generator)
        self.discriminator_step = wrap(DiscriminatorPair(self.discriminator))
        betas = (config.beta1, 0.999)
        fused = {"fused": True} if self.device.type == "cuda" else {}  # one kernel per step, not one per tensor
        self.optimizer_g = torch.optim.Adam(self.generator.parameters(), lr=config.lr, betas=betas, **fused)
        self.optimizer_d = torch.optim.Adam(self.discriminator.parameters(), lr=config.lr, betas=betas, **fused)
        use_scaler = self.precision == "fp16"
        self.scaler_g = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.scaler_d = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.epoch = 0
        self.step = 0

    def prepare_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW (as the data pipeline delivers) -> float in [-1, 1] on the device."""
        return model_inputs(images, self.device, self.memory_format)

    def train_step(self, source: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """One D update then one G update on a batch; returns the detached loss parts."""
        source, target = self.prepare_inputs(source), self.prepare_inputs(target)
        self.generator_step.train()
        self.discriminator_step.train()
        with autocast(self.device, self.precision):
            fake = self.generator_step(source)

        with autocast(self.device, self.precision):
            real_logits, fake_logits = self.discriminator_step(source, target, fake.detach())
        loss_d, parts_d = discriminator_loss(real_logits, fake_logits)
        self.optimizer_d.zero_grad(set_to_none=True)
        self.scaler_d.scale(loss_d).backward()
        self.scaler_d.step(self.optimizer_d)
        self.scaler_d.update()

        self.discriminator.requires_grad_(False)
        try:
            with autocast(self.device, self.precision):
                fake_logits = self.discriminator(source, fake)
            loss_g, parts_g = generator_loss(fake_logits, fake, target, self.config.lambda_l1, self.palette_term)
            self.optimizer_g.zero_grad(set_to_none=True)
            self.scaler_g.scale(loss_g).backward()
            self.scaler_g.step(self.optimizer_g)
            self.scaler_g.update()
        finally:
            self.discriminator.requires_grad_(True)
        if self.generator_average is not None:
            update_average(self.generator_average, self.generator, self.config.ema_decay, self.step)
        self.step += 1
        return {**parts_g, **parts_d}

    def set_learning_rate_factor(self, factor: float) -> None:
        """lr = the recipe's lr x factor, for G and D: what a schedule (training/schedule.py) sets
        before every step."""
        for optimizer in (self.optimizer_g, self.optimizer_d):
            for group in optimizer.param_groups:
                group["lr"] = self.config.lr * factor

    def seed_epoch(self, rank: int = 0) -> None:
        """Seed the epoch's randomness (the generator's dropout masks) by (seed, rank, epoch): each
        worker draws masks of its own, and a run resumed at epoch e draws the masks an uninterrupted
        run draws there. Called by the loop before the epoch's first step."""
        torch.manual_seed(stable_seed(f"dropout/{self.config.seed}/{rank}/{self.epoch}"))

    def end_epoch(self) -> None:
        self.epoch += 1

    def export_info(self, direction: str = "AtoB", palette: dict | None = None) -> ExportInfo:
        """What the generator export records: its training precision (inference at "auto" then
        runs as validation did) and the targets' palette (translation snaps to it)."""
        return ExportInfo(generator=self.config.generator_config(), image_size=self.config.image_size,
                          direction=direction, step=self.step, epoch=self.epoch, precision=self.precision,
                          palette=palette)

    @property
    def learning_rate(self) -> float:
        return self.optimizer_g.param_groups[0]["lr"]

    @property
    def loss_names(self) -> tuple[str, ...]:
        return LOSS_NAMES + (("G_palette",) if self.palette_term else ())

    @property
    def inference_generator(self) -> nn.Module:
        """What validation, the samples and the export use: the weight average when there is one."""
        return self.generator_average if self.generator_average is not None else self.generator

    @torch.inference_mode()
    def translate(self, source: torch.Tensor) -> torch.Tensor:
        """Deterministic inference (eval mode: dropout off) on a uint8 or [-1, 1] batch."""
        return run_generator(self.inference_generator.eval(), source, self.device, self.precision,
                             self.memory_format)

    def evaluate(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                 accumulator: MetricAccumulator | None = None) -> MetricAccumulator:
        accumulator = accumulator or MetricAccumulator()
        for source, target in batches:
            accumulator.update(self.translate(source), self.prepare_inputs(target).float())
        return accumulator

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "optimizer_g": self.optimizer_g.state_dict(),
            "optimizer_d": self.optimizer_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "config": self.config.to_dict(),
            **({"generator_average": self.generator_average.state_dict()} if self.generator_average else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        saved = TrainConfig.from_dict(state["config"])
        for network, found, expected in (
                ("generator", saved.generator_config(), self.config.generator_config()),
                ("discriminator", saved.discriminator_config(), self.config.discriminator_config())):
            if found != expected:
                raise ConfigError(f"the checkpoint's {network} {found} differs from the requested {expected}; pass "
                                 "the run's own --recipe (or --ngf/--ndf/--upsample), or use another --name")
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        for optimizer, name in ((self.optimizer_g, "optimizer_g"), (self.optimizer_d, "optimizer_d")):
            optimizer.load_state_dict(state[name])
            match_parameter_layouts(optimizer)
        load_scaler_state(self.scaler_g, state["scaler_g"])
        load_scaler_state(self.scaler_d, state["scaler_d"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        if self.generator_average is not None and "generator_average" in state:
            self.generator_average.load_state_dict(state["generator_average"])
        # else (the average switched on at a resume): it starts from the restored weights


def match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor (Adam's moments) its parameter's strides, values
    unchanged. load_state_dict keeps the layout the state was saved in: a run saved NCHW (fp32 on
    a CPU) and resumed channels_last (bf16, a GPU, --channels-last), or back, would hold them in
    different layouts, which fused Adam on CUDA refuses on every attempt."""
    for parameter, state in optimizer.state.items():
        for name, value in state.items():
            if torch.is_tensor(value) and value.shape == parameter.shape and value.stride() != parameter.stride():
                state[name] = torch.empty_like(parameter, dtype=value.dtype).copy_(value)


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict) -> None:
    """A checkpoint of a bf16, fp32 or CPU run holds an empty scaler state, which an enabled
    scaler refuses: an fp16 run resumed from it starts with a fresh scale."""
    if state or not scaler.is_enabled():
        scaler.load_state_dict(state)


def sample_grid(model: Pix2Pix, source: np.ndarray, target: np.ndarray) -> Image.Image:
    """Rows of source | generated | target for uint8 NCHW pairs, 4 px apart."""
    generated = to_uint8(model.translate(torch.from_numpy(source))).permute(0, 2, 3, 1).cpu().numpy()
    rows = [[s.transpose(1, 2, 0), g, t.transpose(1, 2, 0)] for s, g, t in zip(source, generated, target)]
    return image_grid(rows, gap=4)


def balance_warning(history: list[dict[str, float]], patience: int = 2) -> str | None:
    """A warning when the epoch losses show one network winning, else None.

    ``history``: per-epoch mean losses (LOSS_NAMES). D near zero for ``patience`` epochs means
    the discriminator wins (G gets no useful gradient); G_GAN far above log 2 means the same
    from the other side; D_fake far above log 2 means the generator fools D completely.
    """
    recent = history[-patience:]
    if len(recent) < patience:
        return None
    if all(0.5 * (epoch["D_real"] + epoch["D_fake"]) < 0.05 for epoch in recent):
        return "discriminator is winning: D loss near 0 for the last epochs (try a lower D lr or more L1)"
    if all(epoch["G_GAN"] > 8 * math.log(2) for epoch in recent):  # D's fake score below ~0.4%
        return "discriminator is winning: G_GAN far above log 2 = 0.69 for the last epochs"
    if all(epoch["D_fake"] > 4 * math.log(2) for epoch in recent):
        return "generator is winning: D cannot tell fakes (D_fake far above 0.69)"
    return None
