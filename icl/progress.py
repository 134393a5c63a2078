"""Progress bars for long library calls (training, Monte Carlo, fingerprints, ``reproduce_all``).

[`progress_bar`][icl.progress.progress_bar] gives a tqdm bar (``tqdm.auto``: a widget in a notebook, text on stderr elsewhere) when asked,
and an object whose methods do nothing otherwise; library calls take ``progress=False`` by default. tqdm is
imported only when a bar is asked for, and its monitor thread is off (set on a subclass, so tqdm's own class is
left as it is): a bar of the library starts no thread. Bars move from Python between compiled calls, never
from inside a compiled program.
"""

from __future__ import annotations

import functools
import sys

__all__ = ["progress_bar"]

class _NoBar:
    """What [`progress_bar`][icl.progress.progress_bar] returns when progress is off: every method does nothing (``write`` prints)."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def write(self, s: str, file=None) -> None:
        print(s, file=sys.stderr if file is None else file, flush=True)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False


@functools.cache
def _bar_class():
    """``tqdm.auto.tqdm`` (a widget in a notebook, text on stderr elsewhere) without its monitor thread.

    ``monitor_interval`` is a class attribute of tqdm; it is set on this subclass only, so tqdm's own class and
    bars created elsewhere are left as they are, and no bar of the library starts a thread. The bar is updated
    from Python between compiled calls, never from inside a compiled program."""
    from tqdm.auto import tqdm

    class Bar(tqdm):
        monitor_interval = 0

    return Bar


def progress_bar(progress, total: int, desc: str, *, unit: str = "chunk", initial: int = 0):
    """A tqdm progress bar on stderr when ``progress`` is true, else an object whose methods do nothing.

    Used as a context manager (``with progress_bar(...) as bar: ... bar.update(k)``); ``bar.write(s)`` prints a
    line without breaking the bar. Library calls take ``progress=False`` by default.
    """
    if not progress:
        return _NoBar()
    return _bar_class()(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True)
