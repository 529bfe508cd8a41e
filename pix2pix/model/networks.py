"""pix2pix networks (Isola et al. 2017): a U-Net generator and a PatchGAN discriminator.

Layer layout, bias rule and initialisation follow the reference implementation
(junyanz/pytorch-CycleGAN-and-pix2pix), so parameter counts match it exactly.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

import torch
from torch import nn

NORM_KINDS = ("instance", "batch")
UPSAMPLE_KINDS = ("transposed", "resize")
MIN_DEPTH, MAX_DEPTH = 2, 10
MAX_DROPOUT_BLOCKS = 3
# The largest tile side a model is trained or run at (16x the paper's 256 px): a bound on what a flag
# or an export may ask for, checked before anything is allocated.
MAX_IMAGE_SIZE = 4096


class _DictConfig:
    """to_dict/from_dict for the frozen config dataclasses below."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        """From JSON: only known keys, and each value of its field's type (an int field takes
        integers only: not 6.5, 1e12 or true)."""
        if not isinstance(d, dict):
            raise ValueError(f"{cls.__name__} must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} keys {unknown}; allowed keys are {sorted(known)}"
            )
        hints = typing.get_type_hints(cls)
        for name, value in d.items():
            if not _of_type(value, hints[name]):
                raise ValueError(f"{cls.__name__}.{name} must be {hints[name].__name__}, got {value!r:.40}")
        return cls(**d)


def _of_type(value, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _check_norm_kind(kind: str) -> None:
    if kind not in NORM_KINDS:
        raise ValueError(f"unknown norm {kind!r}; use one of {', '.join(NORM_KINDS)}")


def _check_positive(owner: str, **values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{owner}.{name} must be >= 1, got {value}")


@dataclass(frozen=True)
class GeneratorConfig(_DictConfig):
    in_channels: int = 3
    out_channels: int = 3
    ngf: int = 64
    depth: int = 8  # down (and up) steps: 8 for 256 px ("unet_256"), 7 for 128 px
    norm: str = "instance"
    dropout: float = 0.5
    # transposed: the paper's 4x4 stride-2 transposed convolutions; resize: nearest-neighbour
    # 2x then a 3x3 convolution, which has no checkerboard (Odena et al., Distill 2016).
    upsample: str = "transposed"

    @classmethod
    def from_dict(cls, d: dict) -> GeneratorConfig:
        """Exports written before palette output was retired record ``"palette": []``: they load;
        one that drew palette classes (a non-empty list) is refused."""
        if isinstance(d, dict):
            if d.get("palette"):
                raise ValueError("this generator outputs palette classes (--palette-output), which was retired: "
                                 "translate with the release that trained it, or train a new model")
            d = {key: value for key, value in d.items() if key != "palette"}
        return super().from_dict(d)

    def __post_init__(self):
        _check_positive(
            "GeneratorConfig", in_channels=self.in_channels,
            out_channels=self.out_channels, ngf=self.ngf,
        )
        if not MIN_DEPTH <= self.depth <= MAX_DEPTH:
            raise ValueError(
                f"GeneratorConfig.depth must be in [{MIN_DEPTH}, {MAX_DEPTH}], got {self.depth}"
            )
        _check_norm_kind(self.norm)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GeneratorConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.upsample not in UPSAMPLE_KINDS:
            raise ValueError(f"unknown upsample {self.upsample!r}; use one of {', '.join(UPSAMPLE_KINDS)}")


@dataclass(frozen=True)
class DiscriminatorConfig(_DictConfig):
    in_channels: int = 6  # source and target concatenated
    ndf: int = 64
    n_layers: int = 3  # 3 => the 70x70 PatchGAN
    norm: str = "instance"

    def __post_init__(self):
        _check_positive(
            "DiscriminatorConfig", in_channels=self.in_channels,
            ndf=self.ndf, n_layers=self.n_layers,
        )
        _check_norm_kind(self.norm)


def check_image_size(image_size: int, depth: int, what: str = "image size") -> None:
    multiple = 2**depth
    if image_size <= 0 or image_size % multiple != 0:
        raise ValueError(
            f"{what} {image_size} is not a multiple of 2^{depth} = {multiple} "
            f"(the U-Net halves it {depth} times); use {multiple}, {2 * multiple}, ... "
            "or a generator depth that fits"
        )


def norm_layer(kind: str, channels: int) -> nn.Module:
    _check_norm_kind(kind)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


def _conv_bias(norm: str) -> bool:
    # A conv followed by BatchNorm gets no bias (BN's shift replaces it); the reference
    # keeps biases with InstanceNorm because it is used there without affine parameters.
    return norm == "instance"


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    # A network built on the meta device (to be loaded from weights) has no values to set, and
    # normal_ there goes through a decomposition that imports torch._dynamo: ~1 s of a start.
    if any(parameter.is_meta for parameter in module.parameters()):
        return
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.affine:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


def _down_conv(in_ch: int, out_ch: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1, bias=bias)


def _up_conv(in_ch: int, out_ch: int, bias: bool, kind: str = "transposed") -> nn.Module:
    if kind == "resize":
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                             nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=bias))
    return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1, bias=bias)


class UNetGenerator(nn.Module):
    """U-Net with `depth` stride-2 down blocks, mirrored up blocks and skip concatenation.

    Level i (0 = outermost) has encoder width ngf * min(2**i, 8). Down block 0 has no
    activation or norm before/after its conv; the innermost down block has no norm.
    Up blocks run innermost-first; each sees the previous up output concatenated with
    the skip from its level, except the innermost, which sees the bottleneck only.

    Dropout rule (the reference's "num_downs - 5" blocks): the up blocks right after
    the innermost whose input and output widths are both ngf*8, at most 3 of them.
    That is 3 for depth 8, 2 for depth 7, 1 for depth 6, 0 for depth <= 5. The cap
    (the paper's three dropout layers) only differs from the reference for depth > 8.
    """

    def __init__(self, config: GeneratorConfig = GeneratorConfig()):
        super().__init__()
        self.config = config
        depth, norm = config.depth, config.norm
        bias = _conv_bias(norm)
        widths = [config.ngf * min(2**i, 8) for i in range(depth)]
        innermost = depth - 1
        # Levels >= 4 are the ones whose up block maps ngf*8 -> ngf*8 channels.
        dropout_levels = set(range(4, innermost)[-MAX_DROPOUT_BLOCKS:]) if config.dropout else set()

        downs = []
        for level, width in enumerate(widths):
            if level == 0:
                downs.append(nn.Sequential(_down_conv(config.in_channels, width, bias)))
                continue
            layers = [nn.LeakyReLU(0.2), _down_conv(widths[level - 1], width, bias)]
            if level != innermost:
                layers.append(norm_layer(norm, width))
            downs.append(nn.Sequential(*layers))

        ups = []
        for level in reversed(range(depth)):
            in_ch = widths[level] if level == innermost else 2 * widths[level]
            if level == 0:
                layers = [nn.ReLU(), _up_conv(in_ch, config.out_channels, True, config.upsample), nn.Tanh()]
            else:
                out_ch = widths[level - 1]
                layers = [nn.ReLU(), _up_conv(in_ch, out_ch, bias, config.upsample), norm_layer(norm, out_ch)]
                if level in dropout_levels:
                    layers.append(nn.Dropout(config.dropout))
            ups.append(nn.Sequential(*layers))

        self.downs = nn.ModuleList(downs)
        self.ups = nn.ModuleList(ups)  # innermost first
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The image in [-1, 1]."""
        for size in x.shape[-2:]:
            check_image_size(int(size), self.config.depth)
        skips = []
        h = x
        for down in self.downs:
            h = down(h)
            skips.append(h)
        h = self.ups[0](skips.pop())
        for up in self.ups[1:]:
            # skip first, as in the reference, so weight layouts match its checkpoints
            h = up(torch.cat([skips.pop(), h], dim=1))
        return h


class PatchDiscriminator(nn.Module):
    """PatchGAN: C64-C128-C256 (stride 2), C512 (stride 1), then a 1-channel conv (stride 1).

    With n_layers=3 each output logit sees a 70x70 input patch. Returns raw logits.
    """

    def __init__(self, config: DiscriminatorConfig = DiscriminatorConfig()):
        super().__init__()
        self.config = config
        norm, ndf = config.norm, config.ndf
        bias = _conv_bias(norm)

        def conv(in_ch, out_ch, stride, with_bias):
            return nn.Conv2d(in_ch, out_ch, kernel_size=4, stride=stride, padding=1, bias=with_bias)

        # The first conv has no norm after it, so it keeps its bias (as the reference).
        layers = [conv(config.in_channels, ndf, 2, True), nn.LeakyReLU(0.2)]
        width = ndf
        for n in range(1, config.n_layers + 1):
            stride = 2 if n < config.n_layers else 1
            next_width = ndf * min(2**n, 8)
            layers += [
                conv(width, next_width, stride, bias),
                norm_layer(norm, next_width),
                nn.LeakyReLU(0.2),
            ]
            width = next_width
        layers.append(conv(width, 1, 1, True))
        self.model = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat([source, target], dim=1))
