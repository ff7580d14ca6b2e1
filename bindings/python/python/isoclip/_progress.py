"""Progress of ``project_gallery``: a ``tqdm.auto`` bar (notebooks and terminals) when tqdm is
installed, else one log line per finished shard on stderr; nothing with ``progress=False``.
The extension module calls ``start``, ``update`` (every ~100 ms) and ``close``."""

from __future__ import annotations

import sys
from typing import List, Optional, Tuple


class _Silent:
    def start(self, rows: int, shards: int) -> None:
        pass

    def update(self, rows_done: int, finished: List[Tuple[str, bool]]) -> None:
        pass

    def close(self) -> None:
        pass


class _Lines(_Silent):
    """One line per shard written (skipped shards are counted, not listed)."""

    def __init__(self, notice: Optional[str]) -> None:
        self.notice = notice
        self.total = 0
        self.done = 0

    def start(self, rows: int, shards: int) -> None:
        self.total = shards
        if shards and self.notice:
            print(f"note: {self.notice}", file=sys.stderr)

    def update(self, rows_done: int, finished: List[Tuple[str, bool]]) -> None:
        for name, skipped in finished:
            if not skipped:
                self.done += 1
                print(f"done {name} ({self.done}/{self.total})", file=sys.stderr)


class _Bar(_Lines):
    """A tqdm bar over rows; its postfix names the last finished shard."""

    def __init__(self, tqdm, notice: Optional[str]) -> None:
        super().__init__(notice)
        self.tqdm = tqdm
        self.bar = None
        self.shown = 0

    def start(self, rows: int, shards: int) -> None:
        if shards and self.notice:
            print(f"note: {self.notice}", file=sys.stderr)
        self.bar = self.tqdm(total=rows, unit="rows", unit_scale=True, desc=f"{shards} shards")

    def update(self, rows_done: int, finished: List[Tuple[str, bool]]) -> None:
        if self.bar is None:
            return
        if rows_done > self.shown:
            self.bar.update(rows_done - self.shown)
            self.shown = rows_done
        if finished:
            name, skipped = finished[-1]
            self.bar.set_postfix_str(f"{'skipped' if skipped else 'done'} {name}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def reporter(enabled: bool, notice: Optional[str]):
    """The reporter for a run: a bar, lines, or nothing."""
    if not enabled:
        return _Silent()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Lines(notice)
    return _Bar(tqdm, notice)
