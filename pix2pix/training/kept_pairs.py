"""A training worker's pairs kept across epochs: decoded and resized to the load size once, then
only cropped and flipped in later epochs (see pix2pix/training/shards.py). One class for both
places a worker decodes: its decode thread and each of its decode processes."""

from __future__ import annotations

import mmap
import threading
from collections.abc import Callable, Iterator

import numpy as np

Place = tuple[int, int]  # (shard file index, row index): a train pair's place in the split
# Linux: the pages of a block are faulted in by the kernel in one go. A kept pair paged in page by
# page cost ~0.35 ms of the ~1.9 ms it takes to make (2-vCPU VM), mapped 64 pairs at once ~0.15.
POPULATE = getattr(mmap, "MAP_POPULATE", 0)


class KeptPairs:
    """Pairs kept by place for good while ``limit_bytes`` has room for them, each made straight
    into its room (``keep_made``): resizing into it saved a copy of the pair (~0.1 ms). Rooms are
    mapped ``BLOCK_PAIRS`` at once. Safe for several threads at once; a kept pair is read-only."""

    BLOCK_PAIRS = 64

    def __init__(self, pair_shape: tuple[int, ...], limit_bytes: int):
        self.pair_shape, self.limit_bytes = pair_shape, limit_bytes
        self.pair_bytes = int(np.prod(pair_shape))
        self.capacity = limit_bytes // self.pair_bytes
        self._pairs: dict[Place, tuple[str, np.ndarray]] = {}
        self._blocks: list[np.ndarray] = []
        self._rooms_made = 0
        self._rooms_returned: list[np.ndarray] = []  # rooms of pairs that could not be made
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._pairs)

    def __contains__(self, place: Place) -> bool:
        return place in self._pairs

    def __iter__(self) -> Iterator[Place]:
        with self._lock:
            return iter(list(self._pairs))

    @property
    def size_bytes(self) -> int:
        return len(self._pairs) * self.pair_bytes

    def get(self, place: Place) -> tuple[str, np.ndarray]:
        """(key, pair) of a kept pair."""
        return self._pairs[place]  # no lock to read: a dict's lookups are atomic, and pairs are never dropped

    def reserve(self, pairs: int) -> None:
        """Map the rooms of the next ``pairs`` pairs now (within the limit): a process that knows
        how many pairs an epoch brings it faults their memory in before the epoch, not during it
        (~0.16 ms a pair on a 2-vCPU VM, ~13% of making one)."""
        with self._lock:
            self._map_blocks(min(self.capacity, self._rooms_made + pairs))

    def keep_made(self, place: Place, key: str,
                  make: Callable[[np.ndarray | None], np.ndarray]) -> tuple[np.ndarray, bool]:
        """``make(room)``'s pair, made into a room of its own and kept when the limit leaves one
        (``make(None)`` makes it elsewhere): (the pair, whether it is kept)."""
        room = self._room()
        try:
            pair = make(room)
        except BaseException:
            if room is not None:
                with self._lock:
                    self._rooms_returned.append(room)
            raise
        if room is None:
            return pair, False
        room.flags.writeable = False
        with self._lock:
            self._pairs[place] = key, room
        return room, True

    def _room(self) -> np.ndarray | None:
        with self._lock:
            if self._rooms_returned:
                return self._rooms_returned.pop()
            if self._rooms_made == self.capacity:
                return None
            self._map_blocks(self._rooms_made + 1)
            block, index = divmod(self._rooms_made, self.BLOCK_PAIRS)
            self._rooms_made += 1
            return self._blocks[block][index]

    def _map_blocks(self, rooms: int) -> None:
        """Blocks mapped until they hold ``rooms`` rooms (at most the capacity); the lock is held."""
        while (mapped := len(self._blocks) * self.BLOCK_PAIRS) < rooms:
            self._blocks.append(self._block(min(self.BLOCK_PAIRS, self.capacity - mapped)))

    def _block(self, pairs: int) -> np.ndarray:
        if not hasattr(mmap, "MAP_ANONYMOUS"):  # Windows: its mmap takes no flags
            return np.empty((pairs, *self.pair_shape), np.uint8)
        memory = mmap.mmap(-1, pairs * self.pair_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | POPULATE)
        return np.frombuffer(memory, np.uint8).reshape(pairs, *self.pair_shape)
