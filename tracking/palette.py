"""One colour per series across every figure: an attack, the worst case or a defence is drawn
in the same colour in a trial's curves and in the sweep report."""

from __future__ import annotations

import zlib

from matplotlib import colormaps

WORST, CLEAN = "worst case", "clean"
FIXED = {
    WORST: "black",
    CLEAN: "grey",
    "fgsm": "#d62728",  # the naive attack, always red
    "none": "#1f77b4",
    "fgsm_rs": "#ff7f0e",
    "pgd": "#2ca02c",
    "trades": "#9467bd",
}


def colour(series: str):
    """A fixed colour for known series, else a stable pick from tab20 by the name's hash."""
    key = series.split(" ")[0] if series not in FIXED else series
    if key in FIXED:
        return FIXED[key]
    return colormaps["tab20"](zlib.crc32(series.encode()) % 20)
