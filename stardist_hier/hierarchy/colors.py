"""Display colours of hierarchy nodes (QuPath classifications, overlays, legends).

A hierarchy file may give a colour per node (``colors: {node: "#rrggbb" or [r, g, b]}``).
Nodes without one inherit their parent's colour, shifted in lightness so that siblings differ;
depth-1 nodes without one take the next colour of :data:`PALETTE`.
"""

from __future__ import annotations

import colorsys

from .labels import HierarchyError

__all__ = ["PALETTE", "parse_color", "default_colors", "to_hex"]

#: Colours of depth-1 nodes that have none, in order (QuPath's defaults where it has one:
#: tumour red, immune purple, stroma green; then distinct others).
PALETTE = [(200, 0, 0), (160, 90, 160), (50, 160, 50), (240, 200, 0), (0, 130, 200), (230, 120, 0),
           (0, 170, 170), (140, 80, 30), (200, 80, 140), (100, 100, 100)]


def parse_color(value, where):
    """``(r, g, b)`` ints from ``"#rrggbb"`` or ``[r, g, b]``; :class:`HierarchyError` naming ``where`` otherwise."""
    if isinstance(value, str) and value.startswith("#") and len(value) == 7:
        try:
            return tuple(int(value[i:i + 2], 16) for i in (1, 3, 5))
        except ValueError:
            pass
    elif isinstance(value, (list, tuple)) and len(value) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value):
        return tuple(int(v) for v in value)
    raise HierarchyError(f"{where}: a colour is \"#rrggbb\" or [r, g, b] with 0..255, got {value!r}")


def to_hex(rgb):
    """``"#rrggbb"`` of an ``(r, g, b)`` tuple."""
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


def _shade(rgb, k, n):
    """The ``k``-th of ``n`` lightness variations of ``rgb`` (k = 0 keeps it)."""
    if n <= 1:
        return tuple(rgb)
    h, light, s = colorsys.rgb_to_hls(*(v / 255 for v in rgb))
    offsets = [0.0] + [(-1) ** i * 0.12 * ((i + 1) // 2) for i in range(1, n)]
    light = min(0.85, max(0.15, light + offsets[k]))
    return tuple(int(round(v * 255)) for v in colorsys.hls_to_rgb(h, light, s))


def default_colors(root, children, explicit):
    """A colour for every node: the explicit ones, else inherited as described in the module docstring."""
    out = {root: tuple(explicit.get(root, (255, 255, 0)))}
    palette = iter(PALETTE * 10)

    def visit(node):
        kids = children[node]
        for k, child in enumerate(kids):
            if child in explicit:
                out[child] = tuple(explicit[child])
            elif node == root:
                out[child] = next(palette)
            else:
                out[child] = _shade(out[node], k, len(kids))
            visit(child)

    visit(root)
    return out
