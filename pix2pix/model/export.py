"""The model's files, as bytes: the pickle-free generator export and the training state.

An export is ``generator.safetensors`` (weights) plus ``generator.json`` (architecture, image
size, direction, step, precision, palette). A training state is ``training_state.pt`` (G, D,
their optimizers and grad scalers, the weight average), loaded with
``torch.load(weights_only=True)``, with the run's training configuration beside it as
``training.json``. Where the files live is pix2pix/checkpoint.py's
business; here nothing touches storage.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass

import safetensors.torch
import torch

from pix2pix.errors import JobError
from pix2pix.model.networks import MAX_IMAGE_SIZE, DiscriminatorConfig, GeneratorConfig, UNetGenerator
from pix2pix.model.palette import PaletteError, palette_to_json, parse_palette
from pix2pix.model.precision import PRECISIONS

EXPORT_FORMAT = "pix2pix-generator"
EXPORT_VERSION = 1
WEIGHTS_FILE = "generator.safetensors"
CONFIG_FILE = "generator.json"
TRAINING_STATE_FILE = "training_state.pt"
TRAINING_CONFIG_FILE = "training.json"


class CheckpointError(JobError):
    """A checkpoint that is missing, unreadable or of another architecture."""


@dataclass(frozen=True)
class ExportInfo:
    generator: GeneratorConfig
    image_size: int = 256
    direction: str = "AtoB"
    step: int = 0
    epoch: int = 0
    precision: str | None = None  # the precision it was trained at (None: not recorded)
    palette: dict | None = None  # the colour-coded targets' palette it was trained on, if any

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": EXPORT_FORMAT,
                "version": EXPORT_VERSION,
                "architecture": "unet",
                "generator": self.generator.to_dict(),
                "image_size": self.image_size,
                "direction": self.direction,
                "step": self.step,
                "epoch": self.epoch,
                "precision": self.precision,
                "palette": palette_to_json(self.palette) if self.palette else None,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> ExportInfo:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{CONFIG_FILE} is not valid JSON: {error}") from None
        except RecursionError:
            raise CheckpointError(f"{CONFIG_FILE} is nested too deeply to be an export") from None
        if not isinstance(raw, dict) or raw.get("format") != EXPORT_FORMAT or raw.get("architecture") != "unet":
            raise CheckpointError(f"{CONFIG_FILE} is not a {EXPORT_FORMAT} (unet) export")
        try:
            return cls(
                generator=GeneratorConfig.from_dict(raw["generator"]),
                image_size=_integer(raw["image_size"], "image_size", 1, MAX_IMAGE_SIZE),
                direction=_choice(raw.get("direction", "AtoB"), "direction", ("AtoB", "BtoA")),
                step=_integer(raw.get("step", 0), "step", 0),
                epoch=_integer(raw.get("epoch", 0), "epoch", 0),
                precision=_choice(raw.get("precision"), "precision", (None, *PRECISIONS)),
                palette=parse_palette(raw["palette"], f"{CONFIG_FILE} palette") if raw.get("palette") else None,
            )
        except (KeyError, TypeError, ValueError, PaletteError) as error:
            raise CheckpointError(f"{CONFIG_FILE} is incomplete or invalid: {error}") from None


def _integer(value, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an integer {bounds}, got {value!r:.40}")
    return value


def _choice(value, name: str, choices: tuple):
    if value not in choices or isinstance(value, bool):
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r:.40}")
    return value


def check_architecture(found: GeneratorConfig | DiscriminatorConfig, expect: GeneratorConfig | DiscriminatorConfig,
                       uri: str) -> None:
    """Refuse a checkpoint of another architecture, naming the fields that differ."""
    if expect != found:
        raise CheckpointError(f"architecture mismatch in {uri}: {_describe_difference(expect, found)}")


def _check_fits(own: dict, state: dict, uri: str) -> None:
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = [
        f"{name} {tuple(state[name].shape)} vs {tuple(own[name].shape)}"
        for name in own
        if name in state and state[name].shape != own[name].shape
    ]
    if missing or unexpected or wrong_shape:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        if wrong_shape:
            problems.append(f"{len(wrong_shape)} shape mismatches (e.g. {wrong_shape[0]})")
        raise CheckpointError(f"weights in {uri} do not fit the declared architecture: " + "; ".join(problems))


def _describe_difference(expected: GeneratorConfig | DiscriminatorConfig,
                         found: GeneratorConfig | DiscriminatorConfig) -> str:
    wanted, have = expected.to_dict(), found.to_dict()
    return ", ".join(f"{key} is {have[key]!r}, expected {wanted[key]!r}"
                     for key in wanted if wanted[key] != have.get(key))


def generator_weights(generator: torch.nn.Module) -> bytes:
    """The generator's weights as safetensors bytes."""
    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in generator.state_dict().items()}
    return safetensors.torch.save(state, metadata={"format": EXPORT_FORMAT})


def generator_from_weights(weights: bytes, info: ExportInfo, uri: str) -> UNetGenerator:
    """Build the declared generator and load safetensors bytes into it, without unpickling
    anything; ``uri`` names the export in errors."""
    try:
        state = safetensors.torch.load(weights)
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"cannot read {WEIGHTS_FILE} in {uri}: {error}") from None
    # The declared architecture built on the meta device (no memory): a tampered generator.json
    # declaring a huge network is refused before anything is allocated. Then its memory, which
    # the weights fill whole (no random initialisation first: 0.44 s at ngf 64).
    with torch.device("meta"):
        generator = UNetGenerator(info.generator)
    _check_fits(generator.state_dict(), state, uri)
    generator = generator.to_empty(device="cpu")
    generator.load_state_dict(state)  # strict: every parameter and buffer
    return generator


def training_state_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def training_state_from_bytes(data: bytes, uri: str) -> dict:
    """The full training state, loaded with weights_only=True (no code execution), once its zip
    archive is known to hold stored entries only: torch.save compresses nothing, and a state
    re-zipped with compression could unpack to any size (weights_only does not bound that)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            packed = [entry.filename for entry in archive.infolist() if entry.compress_type != zipfile.ZIP_STORED
                      or entry.file_size != entry.compress_size]
    except zipfile.BadZipFile as error:
        raise CheckpointError(f"cannot read {TRAINING_STATE_FILE} in {uri}: not a torch.save archive ({error})") \
            from None
    if packed:
        raise CheckpointError(f"cannot read {TRAINING_STATE_FILE} in {uri}: {len(packed)} compressed entries "
                              f"(e.g. {packed[0]}); torch.save writes none, refused unread")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read {TRAINING_STATE_FILE} in {uri}: {error}") from None
