"""A training worker's pairs decoded, kept and augmented by processes of its own (GPU workers).

Decode threads share one GIL: on 2 cores two of them reached ~0.55x what two plain processes
decode, and a GPU worker beside 8-16 CPUs needs all of them (bench/ceiling_training.py). Each
process here owns a fixed part of the worker's pairs (by place): it decodes a pair the first
time it meets it, keeps it at the load size while its share of the byte limit lasts, and in every
epoch crops and flips it with the draws the threads make (``EpochAugmentation``), so the batches
are byte for byte theirs. The crops come back through a ring of shared memory, and the parent
only copies them into batches: pipes carry the encoded records one way and a few bytes back.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import pickle
import socket
import subprocess
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pix2pix.training.augmentation import EpochAugmentation, load_size_for
from pix2pix.training.kept_pairs import KeptPairs, Place

CHUNK_PAIRS = 8  # consecutive pairs of an epoch handed out together, split among their owners
CHUNKS_AHEAD = 6  # chunks in the processes' hands while the parent makes batches
SHARED_MEMORY = Path("/dev/shm")  # where the ring lives (Linux); elsewhere the pairs decode in a thread
PROJECT = Path(__file__).resolve().parents[2]  # what a decode process imports pix2pix from
READY = "ready"
# A decode process's program. Without torch: albumentations imports it when it can (for transforms
# this project does not use), which was 1.1 s of a process's 2.2 s start.
PROGRAM = ("import sys; sys.modules['torch'] = None; "
           "from pix2pix.training.decode_processes import main; main()")


def ring_slots(batch_size: int) -> int:
    """Crops the ring holds: the chunks in flight, and those a batch still being filled spans."""
    return CHUNK_PAIRS * (CHUNKS_AHEAD + math.ceil(batch_size / CHUNK_PAIRS) + 1)


def ring_bytes(batch_size: int, crop: int) -> int:
    return ring_slots(batch_size) * 2 * crop * crop * 3


def ring_fits(batch_size: int, crop: int) -> bool:
    """Whether shared memory has room for the ring, twice over (others may be writing there)."""
    return shared_memory_room() > 2 * ring_bytes(batch_size, crop)


def shared_memory_room() -> int:
    """Free bytes where shared memory lives (0 when there is no such place): a container's default
    /dev/shm is 64 MB, and a write beyond it kills the process with SIGBUS, not an error."""
    try:
        stats = os.statvfs(SHARED_MEMORY)
    except OSError:
        return 0
    return stats.f_bavail * stats.f_frsize


def uint8_array(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A batch's memory for ``DecodeProcesses.batches``: a numpy array, filled and handed out."""
    array = np.empty(shape, np.uint8)
    return array, array


class DecodeProcessError(RuntimeError):
    """A decode process ended without answering (killed, out of memory), or could not start."""


class DecodeProcesses:
    """``processes`` processes making one worker's augmented pairs: ``batches(epoch, rows)``.
    ``kept`` is the set of places whose pair a process keeps (a row of a kept place needs no record).

    Plain subprocesses (``PROGRAM``), not multiprocessing's: its spawn and forkserver children
    import the parent's main module again, which in a Ray worker is Ray's worker script."""

    def __init__(self, processes: int, image_size: int, seed: int, batch_size: int, crop_size: int | None = None,
                 flips: str = "horizontal", kept_bytes: int = 0, epoch_pairs: int = 0):
        crop = crop_size or image_size
        self.batch_size, self.kept = batch_size, set()
        # One epoch at a time: one that stopped early drains its answers in its own thread first.
        self._epoch_lock = threading.Lock()
        self._memory = SharedMemory(create=True, size=ring_bytes(batch_size, crop))
        # Crops as HWC, the layout the augmentation makes them in: a transposing copy here cost a
        # process ~0.13 ms a pair more than cv2's row copies, and a device transposes for free.
        self.ring = np.ndarray((ring_slots(batch_size), 2, crop, crop, 3), np.uint8, buffer=self._memory.buf)
        self.ring.fill(0)  # every page now (the caller checked ``ring_fits``)
        settings = json.dumps({"ring": self._memory.name, "shape": self.ring.shape, "image_size": image_size,
                               "seed": seed, "crop_size": crop_size, "flips": flips,
                               "kept_bytes": kept_bytes // processes,
                               "reserve_pairs": math.ceil(epoch_pairs / processes)})
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(PROJECT),
                                                                                os.environ.get("PYTHONPATH"))))}
        self._connections, self._processes = [], []
        self._finalizer = weakref.finalize(self, shut_down, self._connections, self._processes, self._memory)
        for _ in range(processes):
            ours, theirs = socket.socketpair()
            self._processes.append(subprocess.Popen(
                [sys.executable, "-c", PROGRAM, str(theirs.fileno()), settings], pass_fds=[theirs.fileno()],
                env=environment, stdin=subprocess.DEVNULL))
            theirs.close()
            self._connections.append(Connection(ours.detach()))
        self._started = False

    def wait_started(self) -> None:
        """Wait for the processes' start (the first epoch does): they start while their owner does
        other work (a training worker builds its model), mapping the memory of the pairs they will
        keep in the first epoch."""
        if not self._started:
            for owner in range(len(self._connections)):
                if self._answer(owner) != READY:
                    raise DecodeProcessError("a decode process did not start")
            self._started = True

    def close(self) -> None:
        self._finalizer()

    def owner(self, place: Place) -> int:
        return (place[0] * 1_000_003 + place[1]) % len(self._connections)

    def batches(self, epoch: int, rows: Iterable[tuple[Place, dict | None]],
                allocate: Callable[[tuple[int, ...]], tuple[np.ndarray, Any]] = uint8_array
                ) -> Iterator[dict[str, Any]]:
        """The epoch's rows, (place, record; None for a kept place), as {"source", "target"} uint8
        NHWC batches of ``batch_size``, in the rows' order; a short last batch is dropped. Each is
        made by ``allocate(shape)``: (a numpy array to fill, what to hand out: the array, or the
        tensor in pinned memory that it views, which then takes the crops' one copy out of the ring)."""
        free = deque(range(len(self.ring) // CHUNK_PAIRS))  # chunks of the ring no batch needs any more
        flight: deque[tuple[int, int, list[int]]] = deque()  # (ring chunk, pairs, owners asked), in order
        waiting: list[int] = []  # ring slots of finished crops, in order, not yet in a batch
        unbatched = [0] * len(free)  # per ring chunk, its crops not yet copied into a batch
        chunks = chunked(rows, CHUNK_PAIRS)
        self._epoch_lock.acquire()
        try:
            self.wait_started()
            while True:
                while free and len(flight) < CHUNKS_AHEAD and (chunk := next(chunks, None)):
                    flight.append(self._send(epoch, free.popleft(), chunk))
                if not flight:
                    return
                ring_chunk, count, owners = flight.popleft()
                self._receive(owners)
                waiting += range(ring_chunk * CHUNK_PAIRS, ring_chunk * CHUNK_PAIRS + count)
                unbatched[ring_chunk] = count
                while len(waiting) >= self.batch_size:
                    slots, waiting = waiting[:self.batch_size], waiting[self.batch_size:]
                    (sources, source), (targets, target) = (allocate((len(slots), *self.ring.shape[2:]))
                                                            for _ in range(2))
                    for index, slot in enumerate(slots):
                        sources[index], targets[index] = self.ring[slot]
                    for slot in slots:
                        unbatched[slot // CHUNK_PAIRS] -= 1
                        if unbatched[slot // CHUNK_PAIRS] == 0:
                            free.append(slot // CHUNK_PAIRS)
                    yield {"source": source, "target": target}
        finally:  # answers still owed (an error, or a consumer that stopped) must not reach the next epoch
            try:
                for _, _, owners in flight:
                    self._receive(owners, raise_errors=False)
            finally:
                self._epoch_lock.release()

    def _send(self, epoch: int, ring_chunk: int, chunk: list[tuple[Place, dict | None]]):
        parts: dict[int, list] = {}
        for offset, (place, record) in enumerate(chunk):
            parts.setdefault(self.owner(place), []).append((place, record, ring_chunk * CHUNK_PAIRS + offset))
        for owner, items in parts.items():
            try:
                self._connections[owner].send((epoch, items))
            except OSError:
                raise self._ended(owner) from None
        return ring_chunk, len(chunk), list(parts)

    def _receive(self, owners: list[int], raise_errors: bool = True) -> None:
        failure = None
        for owner in owners:
            kept, error = self._answer(owner)
            self.kept.update(kept)
            failure = failure or error
        if failure is not None and raise_errors:
            raise failure

    def _answer(self, owner: int):
        try:
            return self._connections[owner].recv()
        except (EOFError, OSError):
            raise self._ended(owner) from None

    def _ended(self, owner: int) -> DecodeProcessError:
        return DecodeProcessError(f"a decode process ended (exit code {self._processes[owner].wait()}): "
                                  "killed, or out of memory")


def chunked(items: Iterable, size: int) -> Iterator[list]:
    """Lists of ``size`` items, the last one shorter when the items run out."""
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def shut_down(connections: list[Connection], processes: list[subprocess.Popen], memory: SharedMemory) -> None:
    for connection in connections:
        try:
            connection.send(None)
        except OSError:
            pass
    for process in processes:
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for connection in connections:
        connection.close()
    # Unlinked, not unmapped: a prefetch thread still draining an epoch may be copying from the
    # ring, which numpy does not pin. Its pages go when the last mapping does (this object's).
    memory.unlink()


def serve(connection: Connection, ring: np.ndarray, image_size: int, seed: int, crop_size: int | None, flips: str,
          kept_bytes: int, reserve_pairs: int) -> None:
    """A decode process: (epoch, [(place, record or None, ring slot)]) in, (places newly kept,
    error or None) out, until None or the parent's end. Its share of an epoch's pairs gets its
    rooms before it says it is ready."""
    load = load_size_for(image_size)
    kept, augment = KeptPairs((2, load, load, 3), kept_bytes), None
    kept.reserve(reserve_pairs)
    connection.send(READY)
    while (task := receive(connection)) is not None:
        epoch, items = task
        if augment is None or augment.epoch != epoch:
            augment = EpochAugmentation(image_size, seed, epoch, crop_size, flips)
        newly, error = [], None
        try:
            for place, record, slot in items:
                if record is None:
                    key, pair = kept.get(place)
                else:
                    key = record["key"]
                    pair, is_kept = kept.keep_made(place, key, lambda room: augment.load(record, into=room))
                    if is_kept:
                        newly.append(place)
                ring[slot, 0], ring[slot, 1] = augment.crop_and_flip(key, pair)
        except Exception as failure:  # noqa: BLE001 - raised in the parent, as a thread's would be
            error = failure
        send_answer(connection, newly, error)


def receive(connection: Connection):
    try:
        return connection.recv()
    except (EOFError, OSError):  # the parent is gone
        return None


def send_answer(connection: Connection, newly: list[Place], error: Exception | None) -> None:
    try:
        connection.send((newly, error))
    except (pickle.PicklingError, TypeError, AttributeError, ValueError):  # an error that cannot be pickled
        connection.send((newly, RuntimeError(repr(error))))


def main() -> None:
    """``PROGRAM FD SETTINGS``: the ring is mapped from /dev/shm, not attached as ``SharedMemory``,
    whose tracker would unlink it when this process ends; the end skips the interpreter's teardown
    (nothing is left to flush), which took ~0.6 s with these modules loaded."""
    cv2.setNumThreads(1)  # the worker's CPUs are its processes': a resize on threads of its own would oversubscribe
    descriptor, settings = int(sys.argv[1]), json.loads(sys.argv[2])
    shape = tuple(settings["shape"])
    with open(SHARED_MEMORY / settings["ring"], "r+b") as file:
        memory = mmap.mmap(file.fileno(), int(np.prod(shape)))
    ring = np.ndarray(shape, np.uint8, buffer=memory)
    serve(Connection(descriptor), ring, settings["image_size"], settings["seed"], settings["crop_size"],
          settings["flips"], settings["kept_bytes"], settings["reserve_pairs"])
    os._exit(0)
