"""Progress of a command over many targets, for a person at a terminal.

One line on stderr, redrawn in place (tqdm): done/total, failures so far,
rate and ETA.  Nothing at all when stderr is not a terminal (a pipe, a file,
CI, the daemon), so no output a program reads changes; stdout never carries it.

tqdm rather than rich: no dependencies of its own and a fraction of rich's
import time, and it is imported only when a bar is actually shown.

While a bar is shown, anything else written to stderr through
:func:`terminal_stream` (the audit lines of one-shot commands) clears the bar,
is written, and the bar is redrawn below it, so lines never interleave.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, TypeVar, cast

R = TypeVar("R")

#: tqdm's placeholders; ``postfix`` (", 2 failed") is the failure count.
_FORMAT = "{desc} {n_fmt}/{total_fmt} |{bar:20}| {rate_fmt}{postfix} | ETA {remaining}"
#: For a terminal that reports no size (tqdm would then draw nothing).
_FALLBACK_COLUMNS = 80
_lock = threading.Lock()
_shown: set[object] = set()  # bars on screen: terminal_stream() writes around them


def is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _has_size(stream: IO[str]) -> bool:
    try:
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (OSError, ValueError, AttributeError):
        return False


@contextmanager
def progress(
    label: str,
    total: int,
    *,
    failed: Callable[[R], bool] = lambda _result: False,
    delay: float = 0.0,
    stream: IO[str] | None = None,
) -> Iterator[Callable[[R], None] | None]:
    """A callback to call with each finished item's result, or None when no
    bar is shown (fewer than two items, or ``stream`` — stderr by default — is
    not a terminal).  ``failed(result)`` says whether it counts as a failure;
    with ``delay`` the bar appears only once that many seconds have passed
    (for commands that are usually quick).  Callable from any thread."""
    out = stream if stream is not None else sys.stderr
    if total < 2 or not is_terminal(out):
        yield None
        return
    from tqdm import tqdm  # noqa: PLC0415 - only when a bar is shown

    bar = tqdm(
        total=total,
        desc=label,
        unit=" targets",
        file=out,
        bar_format=_FORMAT,
        postfix="0 failed",
        delay=delay,
        leave=False,  # the command's own output follows; the bar was a live view
        dynamic_ncols=_has_size(out),  # follows the window's width
        ncols=None if _has_size(out) else _FALLBACK_COLUMNS,
    )
    failures = 0
    counter = threading.Lock()

    def advance(result: R) -> None:
        nonlocal failures
        with counter:
            if failed(result):
                failures += 1
                bar.set_postfix_str(f"{failures} failed", refresh=False)
            bar.update(1)
            if bar.n >= total:
                # update() redraws at most every 0.1 s: the final count would
                # otherwise be skipped whenever the last items finish together
                bar.refresh()

    with _lock:
        _shown.add(bar)
    try:
        yield advance
    finally:
        with _lock:
            _shown.discard(bar)
        bar.close()


def terminal_stream(stream: IO[str]) -> IO[str]:
    """``stream`` (stderr) for other writers: while a progress bar is shown,
    each write clears the bar, writes, and redraws the bar below."""
    return cast("IO[str]", _TerminalStream(stream))


class _TerminalStream:

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        if not _shown:
            return self._stream.write(text)
        from tqdm import tqdm  # noqa: PLC0415 - loaded already: a bar is shown

        with tqdm.external_write_mode(file=self._stream):
            return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)  # flush, isatty, encoding, ...


__all__ = ["is_terminal", "progress", "terminal_stream"]
