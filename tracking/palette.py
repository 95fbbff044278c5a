"""One colour per series across every figure: an attack, the worst case or a defence is drawn
in the same colour in a trial's curves and in the sweep report."""

from __future__ import annotations

import zlib

from matplotlib import colormaps

WORST, CLEAN = "worst case", "clean"
FIXED = {
    WORST: "black",
    CLEAN: "grey",
    # attacks: the naive one red; each family in one hue, its stronger variant lighter/darker
    "fgsm": "#d62728",
    "fgsm_stable": "#ff9896",
    "pgd_ce": "#1f77b4",
    "pgd_margin": "#6baed6",
    "pgd_bpda": "#9467bd",
    "apgd_ce": "#2ca02c",
    "apgd_t": "#98df8a",
    "autoattack": "#8c564b",
    "square": "#17becf",
    "transfer": "#bcbd22",
    "noise": "#c7c7c7",
    # defences
    "none": "#393b79",
    "fgsm_rs": "#e6550d",
    "pgd": "#31a354",
    "trades": "#756bb1",
}


def colour(series: str):
    """A fixed colour for known series, else a stable pick from tab20 by the name's hash."""
    key = series.split(" ")[0] if series not in FIXED else series
    if key in FIXED:
        return FIXED[key]
    return colormaps["tab20"](zlib.crc32(series.encode()) % 20)
