"""Aperio ImageScope XML annotations (MoNuSAC, MoNuSeg): parsing and rasterising.

Schema::

    <Annotations>
      <Annotation ...>                       one per class layer
        <Attributes><Attribute Name="Epithelial" .../></Attributes>   class = Attribute@Name
        <Regions>
          <Region ...>                        one per nucleus
            <Vertices><Vertex X="68.5" Y="19"/>...</Vertices>          X = column, Y = row
          </Region>
        </Regions>
      </Annotation>
    </Annotations>

Rules
-----
* Layer name: ``Name`` of the first ``Attribute`` under the Annotation's own
  ``Attributes``; if there is none (MoNuSeg test files: ``<Attributes/>``), the
  Annotation's ``Name`` attribute; ``None`` when both are empty.
* An Annotation without ``Regions`` or with no ``Region`` contributes nothing; a single
  Region is as good as many (we walk the element tree, there is no dict/list ambiguity).
* Vertices are read as floats and filled with :func:`skimage.draw.polygon` clipped to
  the image, so polygons past the edge keep their inside part; a region with fewer than
  3 vertices, or no pixel inside the image, is dropped (counted as ``dropped_regions``).
* Instance ids follow document order over all layers (as the official MoNuSAC code);
  where polygons overlap, the later one wins the shared pixels.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import numpy as np

from .base import ReaderError

__all__ = ["Layer", "read_imagescope", "rasterize"]


@dataclass
class Layer:
    """One Annotation: its class name and its polygons ((K, 2) float arrays of x, y)."""

    name: str | None
    regions: list = field(default_factory=list)


def read_imagescope(path):
    """Parse an ImageScope XML file into a list of :class:`Layer`.

    Raises
    ------
    ReaderError
        If the file is missing, truncated or not ImageScope XML, or a vertex is not a number.
    """
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise ReaderError(path, "annotation file not found") from None
    except ET.ParseError as e:
        raise ReaderError(path, f"corrupt or truncated XML ({e})") from None
    if root.tag != "Annotations":
        raise ReaderError(path, f"not an ImageScope annotation file (root element <{root.tag}>, expected <Annotations>)")
    layers = []
    for ann in root.findall("Annotation"):
        name = None
        attrs = ann.find("Attributes")
        first = attrs.find("Attribute") if attrs is not None else None
        if first is not None and (first.get("Name") or "").strip():
            name = first.get("Name").strip()
        elif (ann.get("Name") or "").strip():
            name = ann.get("Name").strip()
        layer = Layer(name)
        regions = ann.find("Regions")
        for region in ([] if regions is None else regions.findall("Region")):
            verts = region.find("Vertices")
            pts = [] if verts is None else verts.findall("Vertex")
            try:
                xy = np.array([[float(v.get("X")), float(v.get("Y"))] for v in pts], np.float64).reshape(-1, 2)
            except (TypeError, ValueError):
                raise ReaderError(path, f"Region Id={region.get('Id')!r}: a vertex has a missing or non-numeric X/Y") from None
            layer.regions.append(xy)
        layers.append(layer)
    return layers


def rasterize(layers, shape, class_of, ignore_names=(), path="<xml>"):
    """Fill the polygons of ``layers`` into an instance map.

    Parameters
    ----------
    layers : list of Layer
    shape : tuple
        ``(H, W)`` of the image.
    class_of : callable
        Layer name -> class id (int), or ``None`` for a nucleus of unknown class. Raise
        :class:`ReaderError` from it to reject a name.
    ignore_names : iterable of str
        Layer names (case-insensitive) whose regions are ignore regions, not nuclei: they
        are painted last, with the negative id ``-1``, over anything below them.

    Returns
    -------
    inst : numpy.ndarray
        ``(H, W)`` int32: 0 background, 1..n nuclei, -1 ignore.
    classes : dict
        ``{instance id: class id or None}`` of the instances present in ``inst``.
    notes : dict
        ``dropped_regions``: regions with < 3 vertices or outside the image.
    """
    from skimage.draw import polygon

    ignore = {n.lower() for n in ignore_names}
    inst = np.zeros(shape, np.int32)
    classes, dropped, n = {}, 0, 0
    later = []
    for layer in layers:
        is_ignore = layer.name is not None and layer.name.lower() in ignore
        cls = None if is_ignore else class_of(layer.name)
        for xy in layer.regions:
            if len(xy) < 3:
                dropped += 1
                continue
            rr, cc = polygon(xy[:, 1], xy[:, 0], shape)
            if rr.size == 0:
                dropped += 1
                continue
            if is_ignore:
                later.append((rr, cc))
                continue
            n += 1
            inst[rr, cc] = n
            classes[n] = cls
    for rr, cc in later:
        inst[rr, cc] = -1
    present = set(np.unique(inst[inst > 0]).tolist())
    return inst, {k: v for k, v in classes.items() if k in present}, {"dropped_regions": dropped}
