"""Progress of long loops: a live bar on a terminal, a few plain lines in a log.

On a terminal (stderr is a TTY) :class:`Progress` draws a tqdm bar. Otherwise (output redirected
to a file, a batch system's log) it writes one line when a quarter of the work is done, and at
the end, with the rate and the latest values, so a log of a whole run stays a few dozen lines.
"""

from __future__ import annotations

import sys
import time


__all__ = ["Progress"]


class Progress:
    """Progress of ``total`` units of work named ``desc`` (``enabled=False``: silent)."""

    def __init__(self, total: int, desc: str, unit: str = "step", enabled: bool = True,
                 initial: int = 0, lines: int = 4, stream=None):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.done, self.start_count = int(initial), int(initial)
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and self.total > 0
        self.postfix: dict = {}
        self.bar = None
        self.lines, self.next_line = max(1, lines), 1
        self.t0 = time.perf_counter()
        if self.enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=self.done, desc=desc, unit=unit,
                            dynamic_ncols=True, leave=False, file=self.stream)

    def set_postfix(self, **values) -> None:
        """Latest values shown beside the bar (or in the next log line)."""
        self.postfix = values
        if self.bar is not None:
            self.bar.set_postfix(values)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled:
            while self.next_line <= self.lines and \
                    self.done >= self.total * self.next_line / self.lines:
                self.next_line += 1
                self._line()

    def write(self, text: str) -> None:
        """A message that does not break the bar."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def _line(self, early: bool = False) -> None:
        seconds = time.perf_counter() - self.t0
        rate = (self.done - self.start_count) / seconds if seconds > 0 else 0.0
        values = "".join(f", {k}={v}" for k, v in self.postfix.items())
        stop = ", stopped early (converged)" if early else ""
        print(f"{self.desc}: {self.done}/{self.total} {self.unit}s "
              f"({100.0 * self.done / self.total:.0f} %){stop}, {seconds:.1f} s, "
              f"{rate:.2f} {self.unit}s/s{values}", file=self.stream, flush=True)

    def close(self) -> None:
        """End the display; in a log, a loop that stopped early (converged) says so."""
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.done < self.total:
            self._line(early=True)
