"""Translation progress on the driver: a line every PROGRESS_SECONDS (a self-updating line on
a terminal), from the status rows the driver tallies and the planned totals the planning
tasks report to a small actor."""

from __future__ import annotations

import sys
import threading
import time

import ray

from pix2pix.distributed.session import on_driver_node
from pix2pix.progress import progress_line

PROGRESS_SECONDS = 10.0


@ray.remote(num_cpus=0)
class PlanTally:
    """Tiles planned per shard (keyed by shard, so a retried planning task counts once), and
    when the last of ``shards`` was planned (time.time())."""

    def __init__(self, shards: int):
        self.shards = shards
        self.tiles: dict[int, int] = {}
        self.completed: float | None = None

    def add(self, shard: int, tiles: int) -> None:
        self.tiles[shard] = tiles
        if self.completed is None and len(self.tiles) == self.shards:
            self.completed = time.time()

    def totals(self) -> tuple[int, int, float | None]:
        return len(self.tiles), sum(self.tiles.values()), self.completed


class TranslateProgress:
    """``with TranslateProgress(shards, counts):`` prints until the block ends; ``counts`` is
    the driver's live tally (written, skipped, failed, empty)."""

    def __init__(self, shards: int, counts: dict, stream=None):
        self.shards, self.counts = shards, counts
        self.stream = stream or sys.stdout
        self.tally = PlanTally.options(scheduling_strategy=on_driver_node()).remote(shards) if shards else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._planned: tuple[int, int, float | None] = (0, 0, None)
        self._first: tuple[float, int] | None = None  # (time, written) when writing began
        self._terminal = self.stream.isatty()
        self._tally_lost = False

    def __enter__(self) -> TranslateProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        if exc_info[0] is None:
            self.print()
        if self._terminal:
            self.stream.write("\n")
        if self.tally is not None:
            ray.kill(self.tally)  # a dead actor is not an error here

    def _run(self) -> None:
        while not self._stop.wait(PROGRESS_SECONDS):
            self.print()

    def line(self) -> str:
        if self.tally is not None:
            try:
                self._planned = ray.get(self.tally.totals.remote(), timeout=5)
            except ray.exceptions.GetTimeoutError:
                pass  # the last totals will do
            except ray.exceptions.RayError as error:  # the tally is gone: the job goes on without totals
                self.tally, self._tally_lost = None, True
                self._say(f"translate: progress goes on without the planned total (its tally actor is gone: "
                          f"{type(error).__name__})")
        planned_shards, planned_tiles, _ = self._planned
        done = sum(self.counts.get(status, 0) for status in ("written", "skipped", "failed", "empty"))
        written, now = self.counts.get("written", 0), time.monotonic()
        if self._first is None and written:
            self._first = (now, written)
        # The rate since writing began: start-up (planning, loading models) would drag it down.
        rate = (written - self._first[1]) / (now - self._first[0]) if self._first and written > self._first[1] \
            else None
        total = planned_tiles if planned_shards == self.shards else None
        line = progress_line("translate", done, total, rate, "tiles")
        if total is None and not self._tally_lost:
            line += f" (planning: {planned_shards}/{self.shards} input shards listed, {planned_tiles} tiles so far)"
        return line

    @property
    def planned_at(self) -> float | None:
        """When the last input shard was planned (time.time()), as of the last line."""
        return self._planned[2]

    def print(self) -> None:
        line = self.line()
        if self._terminal:
            self.stream.write("\r" + line.ljust(100))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def _say(self, message: str) -> None:
        """A line of its own, also on a terminal (where the progress line rewrites itself)."""
        self.stream.write(("\n" if self._terminal else "") + message + "\n")
        self.stream.flush()
