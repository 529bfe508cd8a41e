"""Where models live: exports and training states in storage, and a run's checkpoints.

Export = a directory holding ``generator.safetensors`` and ``generator.json`` (their format:
pix2pix/model/export.py). Every Ray Train checkpoint directory contains one, next to
``training_state.pt`` and ``training.json`` (the run's training configuration, for reading
without loading the state). A ``--checkpoint`` argument may therefore name an
export/checkpoint directory, its ``generator.safetensors`` file, or a run directory (whose
latest ``checkpoint_*`` is used), locally or on S3.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator

import pyarrow.fs as pafs
import torch

from pix2pix import storage
from pix2pix.model.export import (
    CONFIG_FILE,
    TRAINING_CONFIG_FILE,
    TRAINING_STATE_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    ExportInfo,
    check_architecture,
    generator_from_weights,
    generator_weights,
    training_state_bytes,
    training_state_from_bytes,
)
from pix2pix.model.networks import GeneratorConfig, UNetGenerator

CHECKPOINT_PREFIX = "checkpoint_"


def export_generator(generator: torch.nn.Module, info: ExportInfo, directory: storage.Location) -> None:
    """Write the export into ``directory`` (weights first, config last)."""
    storage.write_bytes(directory.filesystem, posixpath.join(directory.path, WEIGHTS_FILE),
                        generator_weights(generator))
    storage.write_bytes(directory.filesystem, posixpath.join(directory.path, CONFIG_FILE), info.to_json().encode())


def find_export(uri: str) -> storage.Location:
    """Resolve any accepted --checkpoint spelling to the directory holding an export."""
    location = storage.resolve(uri)
    filesystem = location.filesystem
    if location.path.endswith(".safetensors"):
        location = storage.Location(filesystem, posixpath.dirname(location.path), uri)
    info = storage.file_info(filesystem, location.path)
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
        for entry in storage.file_info(run.filesystem, selector)
        if entry.type == pafs.FileType.Directory and posixpath.basename(entry.path).startswith(CHECKPOINT_PREFIX)
    )
    for name in reversed(names):
        if _has_complete_export(run.join(name)):
            yield run.join(name)


def _has_export(location: storage.Location) -> bool:
    weights = storage.file_info(location.filesystem, posixpath.join(location.path, WEIGHTS_FILE))
    return weights.type == pafs.FileType.File


def _has_complete_export(location: storage.Location) -> bool:
    """Both files there and the weights as long as their header says: Ray Train copies a
    checkpoint file by file, so a full disk or a crash can leave a truncated one behind."""
    filesystem = location.filesystem
    weights, config = storage.file_info(filesystem, [posixpath.join(location.path, name)
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
    except OSError as error:
        raise CheckpointError(f"cannot read {WEIGHTS_FILE} in {uri}: {error}") from None
    return generator_from_weights(weights, info, uri).to(device).eval(), info


def save_training_state(state: dict, directory: storage.Location) -> None:
    storage.write_bytes(directory.filesystem, posixpath.join(directory.path, TRAINING_STATE_FILE),
                        training_state_bytes(state))
    storage.write_text(directory.join(TRAINING_CONFIG_FILE), json.dumps(state["config"], indent=2))


def read_training_config(directory: storage.Location) -> dict | None:
    """The training configuration a checkpoint was saved with (None: saved before it was recorded)."""
    location = directory.join(TRAINING_CONFIG_FILE)
    return json.loads(storage.read_text(location)) if storage.exists(location) else None


def load_training_state(directory: storage.Location) -> dict:
    """The full training state, loaded with weights_only=True (no code execution)."""
    data = storage.read_bytes(directory.filesystem, posixpath.join(directory.path, TRAINING_STATE_FILE))
    return training_state_from_bytes(data, directory.uri)
