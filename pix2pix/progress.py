"""Progress lines a person can follow: done of total, rate, ETA."""

from __future__ import annotations


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def progress_line(what: str, done: int, total: int | None, rate: float | None, unit: str) -> str:
    """e.g. "translate: 1200/5000 tiles (24%), 12.3 tiles/s, ETA 5m10s". ``total`` None: not
    known yet; ``rate`` None: nothing done yet."""
    line = f"{what}: {done}/{total} {unit} ({100 * done / total:.0f}%)" if total else f"{what}: {done} {unit}"
    if rate:
        line += f", {rate:.3g} {unit}/s"
        if total:
            line += f", ETA {duration(max(0, total - done) / rate)}"
    return line
