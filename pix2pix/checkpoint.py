"""Saving and loading models: the pickle-free generator export and the full training state.

Export = a directory holding ``generator.safetensors`` (weights) and ``generator.json``
(architecture, image size, direction, step). Every Ray Train checkpoint directory contains
one, next to ``training_state.pt`` (G, D, optimizers, schedulers; loaded with
``torch.load(weights_only=True)``) and ``training.json`` (the run's training configuration, for
reading without loading the state). A ``--checkpoint`` argument may therefore name an
export/checkpoint directory, its ``generator.safetensors`` file, or a run directory (whose
latest ``checkpoint_*`` is used), locally or on S3.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.fs as pafs
import safetensors.torch
import torch

from pix2pix import storage
from pix2pix.networks import DiscriminatorConfig, GeneratorConfig, UNetGenerator
from pix2pix.palette import palette_to_json, parse_palette

EXPORT_FORMAT = "pix2pix-generator"
EXPORT_VERSION = 1
WEIGHTS_FILE = "generator.safetensors"
CONFIG_FILE = "generator.json"
TRAINING_STATE_FILE = "training_state.pt"
TRAINING_CONFIG_FILE = "training.json"
CHECKPOINT_PREFIX = "checkpoint_"


class CheckpointError(ValueError):
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
        if raw.get("format") != EXPORT_FORMAT or raw.get("architecture") != "unet":
            raise CheckpointError(f"{CONFIG_FILE} is not a {EXPORT_FORMAT} (unet) export")
        try:
            return cls(
                generator=GeneratorConfig.from_dict(raw["generator"]),
                image_size=int(raw["image_size"]),
                direction=raw.get("direction", "AtoB"),
                step=int(raw.get("step", 0)),
                epoch=int(raw.get("epoch", 0)),
                precision=raw.get("precision"),
                palette=parse_palette(raw["palette"], f"{CONFIG_FILE} palette") if raw.get("palette") else None,
            )
        except (KeyError, TypeError, ValueError) as error:  # PaletteError included
            raise CheckpointError(f"{CONFIG_FILE} is incomplete or invalid: {error}") from None


def export_generator(generator: torch.nn.Module, info: ExportInfo, directory: storage.Location) -> None:
    """Write the export into ``directory`` (weights first, config last)."""
    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in generator.state_dict().items()}
    weights = safetensors.torch.save(state, metadata={"format": EXPORT_FORMAT})
    storage.write_bytes(directory.filesystem, posixpath.join(directory.path, WEIGHTS_FILE), weights)
    storage.write_bytes(directory.filesystem, posixpath.join(directory.path, CONFIG_FILE), info.to_json().encode())


def find_export(uri: str) -> storage.Location:
    """Resolve any accepted --checkpoint spelling to the directory holding an export."""
    location = storage.resolve(uri)
    filesystem = location.filesystem
    if location.path.endswith(".safetensors"):
        location = storage.Location(filesystem, posixpath.dirname(location.path), uri)
    info = filesystem.get_file_info(location.path)
    if info.type == pafs.FileType.NotFound:
        raise CheckpointError(f"checkpoint not found: {uri}")
    if _has_export(location):
        return location
    if info.type == pafs.FileType.Directory:
        latest = latest_checkpoint(location)
        if latest is not None:
            return latest
    raise CheckpointError(
        f"no generator export in {uri}: expected {WEIGHTS_FILE} + {CONFIG_FILE}, "
        f"a Ray Train checkpoint directory, or a run directory with {CHECKPOINT_PREFIX}* inside"
    )


def latest_checkpoint(run: storage.Location) -> storage.Location | None:
    """The newest complete ``checkpoint_*`` directory of a run (Ray Train names them by time);
    one left incomplete by a crash is passed over."""
    return next(complete_checkpoints(run), None)


def complete_checkpoints(run: storage.Location) -> Iterator[storage.Location]:
    """A run's complete ``checkpoint_*`` directories, newest first."""
    selector = pafs.FileSelector(run.path, recursive=False, allow_not_found=True)
    names = sorted(
        posixpath.basename(entry.path)
        for entry in run.filesystem.get_file_info(selector)
        if entry.type == pafs.FileType.Directory and posixpath.basename(entry.path).startswith(CHECKPOINT_PREFIX)
    )
    for name in reversed(names):
        if _has_complete_export(run.join(name)):
            yield run.join(name)


def _has_export(location: storage.Location) -> bool:
    weights = location.filesystem.get_file_info(posixpath.join(location.path, WEIGHTS_FILE))
    return weights.type == pafs.FileType.File


def _has_complete_export(location: storage.Location) -> bool:
    """Both files there and the weights as long as their header says: Ray Train copies a
    checkpoint file by file, so a full disk or a crash can leave a truncated one behind."""
    filesystem = location.filesystem
    weights, config = filesystem.get_file_info([posixpath.join(location.path, name)
                                                for name in (WEIGHTS_FILE, CONFIG_FILE)])
    if weights.type != pafs.FileType.File or config.type != pafs.FileType.File or weights.size < 8:
        return False
    header_size = int.from_bytes(storage.read_range(filesystem, weights.path, 0, 8), "little")
    if header_size > min(weights.size - 8, 100 * 2**20):
        return False
    try:  # a store that cannot be read raises: never fall back to an older checkpoint on a throttle
        header = json.loads(storage.read_range(filesystem, weights.path, 8, header_size))
        end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return False
    return weights.size == 8 + header_size + end


def read_export_info(directory: storage.Location) -> ExportInfo:
    return ExportInfo.from_json(storage.read_text(directory.join(CONFIG_FILE)))


def load_generator(
    uri: str, expect: GeneratorConfig | None = None, device: str | torch.device = "cpu"
) -> tuple[UNetGenerator, ExportInfo]:
    """Load an exported generator without unpickling anything.

    ``expect``: refuse an export whose architecture differs, naming the differing fields.
    """
    directory = find_export(uri)
    info = read_export_info(directory)
    if expect is not None:
        check_architecture(info.generator, expect, uri)
    try:
        weights = storage.read_bytes(directory.filesystem, posixpath.join(directory.path, WEIGHTS_FILE))
        state = safetensors.torch.load(weights)
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"cannot read {WEIGHTS_FILE} in {uri}: {error}") from None
    # Compare with the declared architecture built on the meta device (no memory): a tampered
    # generator.json declaring a huge network is refused before anything is allocated.
    with torch.device("meta"):
        declared = UNetGenerator(info.generator).state_dict()
    _check_fits(declared, state, uri)
    generator = UNetGenerator(info.generator)
    generator.load_state_dict(state)
    return generator.to(device).eval(), info


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


def save_training_state(state: dict, directory: storage.Location) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    storage.write_bytes(directory.filesystem, posixpath.join(directory.path, TRAINING_STATE_FILE), buffer.getvalue())
    storage.write_text(directory.join(TRAINING_CONFIG_FILE), json.dumps(state["config"], indent=2))


def read_training_config(directory: storage.Location) -> dict | None:
    """The training configuration a checkpoint was saved with (None: saved before it was recorded)."""
    location = directory.join(TRAINING_CONFIG_FILE)
    return json.loads(storage.read_text(location)) if storage.exists(location) else None


def load_training_state(directory: storage.Location) -> dict:
    """The full training state, loaded with weights_only=True (no code execution)."""
    data = storage.read_bytes(directory.filesystem, posixpath.join(directory.path, TRAINING_STATE_FILE))
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read {TRAINING_STATE_FILE} in {directory.uri}: {error}") from None
