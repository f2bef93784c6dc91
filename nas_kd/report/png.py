"""The Pareto chart as a PNG, through kaleido (Plotly's image export), which drives a Chromium browser.

kaleido finds the browser itself: ``$BROWSER_PATH`` when set, else ``chromium``, ``google-chrome``
and the like on ``PATH`` (choreographer's lookup). A missing piece is a note naming the command
that adds it; the HTML report never depends on the PNG.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import plotly.graph_objects as go

from nas_kd.files import atomic_path

PNG_TIMEOUT_S = 60.0  # a browser that hangs must not hold the report (or the search that wrote it) up
PNG_SIZE = (1100, 650)
NEEDS_KALEIDO = "note: no PNG written (Plotly's image export needs kaleido: pip install kaleido)"
NEEDS_BROWSER = ("note: no PNG written (kaleido found no Chromium browser: apt-get install -y chromium, "
                 "or set BROWSER_PATH to one)")


def image_export_installed() -> bool:
    """Whether kaleido is importable; it still needs a Chromium browser to work."""
    return importlib.util.find_spec("kaleido") is not None


def _export(fig: go.Figure, path: Path) -> None:
    """Render ``fig`` into ``path`` (atomically). MathJax is off: it would be fetched from the network,
    and no chart here has formulas; plotly.js comes from the plotly package."""
    import kaleido  # optional: image_export_installed() has checked that it is there

    width, height = PNG_SIZE
    with atomic_path(path) as tmp:
        tmp.write_bytes(kaleido.calc_fig_sync(fig, opts=dict(format="png", width=width, height=height),
                                              kopts=dict(mathjax=False)))


def write_png(fig: go.Figure, path: Path, *, timeout: float = PNG_TIMEOUT_S) -> str | None:
    """Write ``fig`` as a PNG at ``path``; None when written, else the one-line note saying why not.

    The export runs in a daemon thread, so a browser that never answers costs ``timeout`` at most."""
    if not image_export_installed():
        return NEEDS_KALEIDO
    from kaleido.errors import ChromeNotFoundError

    failure: list[str] = []

    def export() -> None:
        try:
            _export(fig, path)
        except ChromeNotFoundError:
            failure.append(NEEDS_BROWSER)
        except Exception as err:  # noqa: BLE001 - a broken browser or kaleido: the HTML report is what matters
            reason = (str(err).strip().splitlines() or ["no message"])[0]
            failure.append(f"note: no PNG written ({type(err).__name__}: {reason})")
        else:
            failure.append("")

    worker = threading.Thread(target=export, name="nas_kd-png", daemon=True)
    worker.start()
    worker.join(timeout)
    if not failure:
        return f"note: no PNG written (the image export did not finish within {timeout:g} s)"
    return failure[0] or None
