"""The scene renderer: tissue layout, placement and painting of nuclei, the H&E image.

What a tile looks like
----------------------
Tiles are rendered in optical density: hematoxylin and eosin concentration maps are mixed
with per-dataset stain vectors (Beer-Lambert, ``I = I0 * exp(-OD)``), then blurred and given
sensor noise. Eosin-pink stroma has wavy collagen fibres with loose gaps and small vessels
holding red blood cells; epithelium forms glands (healthy, with lumens and nuclei palisading
along the basement membrane) or solid nests (malignant, crowded and overlapping). Nuclei
are hematoxylin-dark with chromatin texture; touching and overlapping nuclei are common and
overlaps resolve in the instance mask with the later-drawn nucleus on top.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from .nuclei import _rotate


# optical density (RGB) of red blood cells
_RBC = np.array([0.10, 0.85, 0.52])


# ----------------------------------------------------------------------------------------
# Drawing helpers


def _smooth_noise(rng, shape, sigma):
    """Gaussian-filtered white noise scaled to unit standard deviation.

    Filtered in the Fourier domain (periodic boundaries): the cost does not grow with
    ``sigma``, and tile-wide fields use sigmas of tens of pixels.
    """
    spec = np.fft.rfft2(rng.standard_normal(shape))
    n = np.fft.irfft2(ndi.fourier_gaussian(spec, sigma, n=shape[1], axis=-1), s=shape)
    return n / (n.std() + 1e-9)


class _Sampler:
    """Draws positions with probability proportional to a weight map (cumulative sums cached)."""

    def __init__(self, weight):
        self.shape = weight.shape
        self.cs = np.cumsum(weight.ravel(), dtype=np.float64)
        self.any = bool(self.cs[-1] > 0)

    def __call__(self, rng, n=1):
        size = self.cs.size
        if not self.any:
            flat = rng.integers(0, size, n)
        else:
            flat = np.minimum(np.searchsorted(self.cs, rng.random(n) * self.cs[-1], side="right"), size - 1)
        y, x = np.divmod(flat, self.shape[1])
        return np.stack([y + rng.random(n) - 0.5, x + rng.random(n) - 0.5], axis=1)


def _sample_weighted(rng, weight, n=1):
    """``n`` (y, x) positions drawn with probability proportional to ``weight``."""
    return _Sampler(weight)(rng, n)


def _window(cy, cx, radius, shape):
    """Slices of a square window around (cy, cx) clipped to ``shape`` and the local grid."""
    r = int(math.ceil(radius)) + 2
    y0, y1 = max(int(cy) - r, 0), min(int(cy) + r + 1, shape[0])
    x0, x1 = max(int(cx) - r, 0), min(int(cx) + r + 1, shape[1])
    if y0 >= y1 or x0 >= x1:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1]
    return (slice(y0, y1), slice(x0, x1)), yy - cy, xx - cx


# ----------------------------------------------------------------------------------------
# The scene


class _Scene:
    """One tile being drawn: stain concentration maps, the label map and the nuclei placed.

    Hematoxylin (``h_*``) and eosin (``e_*``) are kept apart for background, cytoplasm and
    nuclei so that each layer can be textured and blurred on its own before mixing.
    """

    def __init__(self, size, rng, scale):
        self.size = size
        self.rng = rng
        self.scale = scale
        shape = (size, size)
        self.h_bg = np.zeros(shape)
        self.e_bg = np.zeros(shape)
        self.h_cyt = np.zeros(shape)
        self.e_cyt = np.zeros(shape)
        self.h_nuc = np.zeros(shape)
        self.e_nuc = np.zeros(shape)
        self.nuc_cover = np.zeros(shape)
        self.rbc = np.zeros(shape)
        self.labels = np.zeros(shape, np.int32)
        self.fine = _smooth_noise(rng, shape, 0.7)
        self.coarse = _smooth_noise(rng, shape, 1.6)
        self.nuclei = []

    # -- tissue layout --------------------------------------------------------------------

    def layout(self, epi_fraction, glandular, n_vessels, muscle_bundles):
        rng, size = self.rng, self.size
        shape = (size, size)
        yy, xx = np.mgrid[0:size, 0:size]
        field_ = _smooth_noise(rng, shape, size / 7.0)
        if epi_fraction > 0:
            thr = np.quantile(field_, 1 - epi_fraction)
            self.epi = field_ > thr
            # no slivers of epithelium too thin to hold a cell
            self.epi = ndi.binary_opening(self.epi, iterations=2) if epi_fraction > 0.1 else self.epi
        else:
            self.epi = np.zeros(shape, bool)
        self.epi_dist = ndi.distance_transform_edt(self.epi)
        self.lumen = np.zeros(shape, bool)
        if glandular and self.epi.any():
            depth = rng.uniform(16, 22) * self.scale
            self.lumen = self.epi_dist > depth
        # collagen: streaky noise along the tile's fibre direction, warped so fibres wave
        self.fibre_angle = rng.uniform(0, math.pi)
        big = size + 64
        # wavy collagen: broad bundles plus fine fibrils, both running along the fibre angle
        streak = (0.65 * _smooth_noise(rng, (big, big), (2.5, 16.0))
                  + 0.45 * _smooth_noise(rng, (big, big), (0.7, 7.0)))
        warp_y = _smooth_noise(rng, shape, size / 8) * 10
        warp_x = _smooth_noise(rng, shape, size / 8) * 10
        c, s = math.cos(self.fibre_angle), math.sin(self.fibre_angle)
        u = (xx + warp_x) * c + (yy + warp_y) * s
        v = -(xx + warp_x) * s + (yy + warp_y) * c
        fibres = ndi.map_coordinates(streak, [v % big, u % big], order=1, mode="wrap")
        # bundles of collagen with thin clefts between them
        fibres = 1 / (1 + np.exp(-1.6 * (fibres + 0.6)))
        loose = np.clip(0.55 + 0.6 * _smooth_noise(rng, shape, size / 12), 0.3, 1.0)
        self.e_bg[:] = (0.10 + 0.32 * fibres) * loose + 0.04
        self.h_bg[:] = 0.04 + 0.02 * self.coarse
        # epithelium: amphophilic cytoplasm, fine granular texture
        cyto_e = 0.30 + 0.025 * self.fine + 0.03 * self.coarse
        self.e_bg[self.epi] = cyto_e[self.epi]
        self.h_bg[self.epi] = (0.12 + 0.03 * self.coarse)[self.epi]
        self.e_bg[self.lumen] *= 0.08
        self.h_bg[self.lumen] = 0.03
        self.stroma = ~self.epi
        # small vessels in the stroma: lumen with red blood cells, lined by endothelium
        self.vessels = []
        for _ in range(n_vessels):
            w = self.stroma.astype(float)
            (vy, vx), = _sample_weighted(rng, w if w.any() else np.ones(shape))
            rv = rng.uniform(8, 20) * self.scale
            lum = (yy - vy) ** 2 + (xx - vx) ** 2 <= rv * rv
            self.e_bg[lum] *= 0.1
            self.h_bg[lum] *= 0.2
            for _ in range(int(rng.integers(0, 4))):
                t, d = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.6) * rv
                rbc = (yy - vy - d * math.sin(t)) ** 2 + (xx - vx - d * math.cos(t)) ** 2 <= (7.5 * self.scale) ** 2
                self.rbc[rbc & lum] = 1.1
            self.stroma &= ~((yy - vy) ** 2 + (xx - vx) ** 2 <= (rv + 4) ** 2)
            self.vessels.append((vy, vx, rv))
        self.bundles = []
        for _ in range(muscle_bundles):
            (by, bx), = _sample_weighted(rng, self.stroma.astype(float) + 1e-6)
            ang = self.fibre_angle + rng.normal(0, 0.3)
            self.bundles.append((by, bx, ang))
            # a smooth-muscle fascicle: homogeneous, deeper pink than collagen, no fibrils
            across = np.abs(-(xx - bx) * math.sin(ang) + (yy - by) * math.cos(ang) + 0.4 * warp_y)
            width = rng.uniform(16, 26) * self.scale
            band = np.clip((width - across) / 6, 0, 1) * self.stroma
            self.e_bg[:] = self.e_bg * (1 - band) + band * (0.46 + 0.03 * self.fine)
        # where nuclei go
        band = self.epi & ~self.lumen & (self.epi_dist >= 2) & (self.epi_dist <= 14 * self.scale)
        nest = self.epi & ~self.lumen
        self.w_any = _Sampler(np.where(self.lumen, 0.02, 1.0))
        self.w_stroma = _Sampler(self.stroma.astype(float) + 1e-6)
        self.w_nest = _Sampler(nest.astype(float)) if nest.any() else self.w_any
        self.w_gland = _Sampler(band.astype(float)) if band.any() else self.w_nest
        self.infiltrates = [tuple(self.w_stroma(rng)[0]) for _ in range(int(rng.integers(0, 3)))]
        gy, gx = np.gradient(ndi.gaussian_filter(self.epi_dist, 2.0))
        self.epi_dir = np.arctan2(gy, gx)

    # -- placement ------------------------------------------------------------------------

    def position(self, nuc):
        """A centre and long-axis angle for ``nuc`` according to its site."""
        rng, size, site = self.rng, self.size, nuc.morph.site
        if site == "gland":
            (y, x), = self.w_gland(rng)
            # columnar cells stand perpendicular to the basement membrane
            yi, xi = min(max(int(y), 0), size - 1), min(max(int(x), 0), size - 1)
            return (y, x), float(self.epi_dir[yi, xi] + rng.normal(0, 0.25))
        if site == "nest":
            (y, x), = self.w_nest(rng)
            return (y, x), rng.uniform(0, math.pi)
        if site == "vessel" and self.vessels:
            vy, vx, rv = self.vessels[rng.integers(len(self.vessels))]
            t = rng.uniform(0, 2 * math.pi)
            d = rv + nuc.b * 0.6
            # along the lumen's wall, curved with it (the v axis points at the lumen centre)
            nuc.bend = 1.0 / (2 * d)
            return (vy + d * math.sin(t), vx + d * math.cos(t)), t + math.pi / 2
        if site == "bundle" and self.bundles:
            by, bx, ang = self.bundles[rng.integers(len(self.bundles))]
            t, s = rng.normal(0, size / 4), rng.normal(0, 14 * self.scale)
            y = by + t * math.sin(ang) + s * math.cos(ang)
            x = bx + t * math.cos(ang) - s * math.sin(ang)
            return (y, x), ang + rng.normal(0, 0.12)
        if site == "infiltrate":
            if self.infiltrates and rng.random() < 0.55:
                cy, cx = self.infiltrates[rng.integers(len(self.infiltrates))]
                y, x = rng.normal(cy, 22 * self.scale), rng.normal(cx, 22 * self.scale)
                return (y, x), rng.uniform(0, math.pi)
            # some immune cells sit inside the epithelium (intra-epithelial lymphocytes)
            (y, x), = (self.w_any if rng.random() < 0.15 else self.w_stroma)(rng)
            return (y, x), rng.uniform(0, math.pi)
        if site in ("stroma", "vessel", "bundle"):
            (y, x), = self.w_stroma(rng)
            along = nuc.morph.shape in ("spindle", "blunt", "flat")
            return (y, x), (self.fibre_angle + rng.normal(0, 0.25)) if along else rng.uniform(0, math.pi)
        (y, x), = self.w_any(rng)
        return (y, x), rng.uniform(0, math.pi)

    def place(self, nuc, tries=8):
        """Find a position where ``nuc`` overlaps others little enough; paint it there."""
        for _ in range(tries):
            (cy, cx), angle = self.position(nuc)
            if not (-4 <= cy < self.size + 4 and -4 <= cx < self.size + 4):
                continue
            nuc.center, nuc.angle = (float(cy), float(cx)), float(angle)
            win = _window(cy, cx, nuc.radius, self.labels.shape)
            if win is None:
                continue
            sl, dy, dx = win
            m = nuc.inside(dy, dx)
            if m.sum() < 6:
                continue
            if (self.labels[sl][m] > 0).mean() > nuc.morph.overlap:
                continue
            self.nuclei.append(nuc)
            self.labels[sl][m] = len(self.nuclei)
            self._paint_cytoplasm(nuc)
            self._paint_nucleus(nuc, sl, dy, dx, m)
            return True
        return False

    # -- painting -------------------------------------------------------------------------

    def _paint_cytoplasm(self, nuc):
        kind = nuc.morph.cytoplasm
        if kind is None:
            return
        rng, (cy, cx) = self.rng, nuc.center
        s = self.scale
        if kind in ("neutrophil", "eosinophil", "macrophage", "apoptotic"):
            r = {"neutrophil": 19 * s, "eosinophil": 19 * s, "macrophage": 2.0 * nuc.a,
                 "apoptotic": 2.0 * nuc.a}[kind] * rng.uniform(0.9, 1.1)
            win = _window(cy, cx, r * 1.4, self.labels.shape)
            if win is None:
                return
            sl, dy, dx = win
            rad = np.hypot(dy, dx) / r
            body = np.clip((1.05 - rad) * 6, 0, 1)
            if kind == "neutrophil":
                self.e_cyt[sl] += 0.14 * body
                self.h_cyt[sl] += 0.05 * body
            elif kind == "eosinophil":
                # coarse refractile granules: a bright orange-pink, grainy cytoplasm
                gran = np.clip(0.6 + 0.6 * self.fine[sl], 0.2, 1.4)
                self.e_cyt[sl] += 0.95 * body * gran
            elif kind == "macrophage":
                foam = np.clip(1 - 0.5 * (self.coarse[sl] > 0.6), 0, 1)
                self.e_cyt[sl] += 0.16 * body * foam
                self.h_cyt[sl] += 0.06 * body * foam
            else:
                # apoptotic body: shrunken, hypereosinophilic, with a clear retraction halo
                halo = (rad > 1.0) & (rad < 1.3)
                self.e_bg[sl][halo] *= 0.6
                self.e_cyt[sl] += 0.55 * body
            return
        # elongated bodies
        if kind == "muscle":
            # cell borders in a fascicle are indistinct: a faint, soft-edged body
            la, lb, off = nuc.a * 2.0, nuc.b * 2.4, 0.0
            e, h = 0.08, 0.03
        else:  # plasma: eccentric nucleus in an amphophilic cell with a perinuclear hof
            la, lb, off = nuc.a * 1.8, nuc.b * 1.6, nuc.a * 0.75
            e, h = 0.26, 0.28
        win = _window(cy, cx, la + off + 2, self.labels.shape)
        if win is None:
            return
        sl, dy, dx = win
        u, v = _rotate(dy, dx, nuc.angle)
        body = np.clip((1.0 - np.hypot((u - off) / la, v / lb)) * 4, 0, 1)
        if kind == "plasma":
            # the Golgi hof: a paler zone against the nucleus on the cytoplasm's side
            hof = np.hypot((u - nuc.a * 1.25) / (0.45 * nuc.a), v / (0.55 * nuc.b))
            body = body * (1 - 0.45 * np.clip(1.3 - hof, 0, 1))
        self.e_cyt[sl] += e * body
        self.h_cyt[sl] += h * body

    def _paint_nucleus(self, nuc, sl, dy, dx, m):
        mo = nuc.morph
        d = ndi.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
        dn = d / max(d.max(), 1.0)
        tex = (1 - mo.grain) * self.fine[sl] + mo.grain * self.coarse[sl]
        h = nuc.hema * (1 + mo.texture * tex)
        # vesicular nuclei: chromatin condensed on the membrane, a pale centre
        h *= 1 - mo.pallor * dn
        h += nuc.hema * mo.rim * np.exp(-(d - 0.5) / 1.1)
        u, v = _rotate(dy, dx, nuc.angle)
        if mo.clockface:
            ang = np.arctan2(v / nuc.b, u / nuc.a)
            rad = np.hypot(u / nuc.a, v / nuc.b)
            spokes = np.clip(np.cos(7 * ang + nuc.a), 0, 1) ** 3
            h += nuc.hema * 0.55 * spokes * np.exp(-((rad - 0.7) / 0.18) ** 2)
        e = np.zeros_like(h)
        strength = mo.nucleoli[2]
        for nu, nv, r in nuc.nucleoli:
            spot = np.exp(-((u - nu) ** 2 + (v - nv) ** 2) / (2 * (r * 0.7) ** 2))
            # nucleoli are dense and amphophilic-to-eosinophilic: darker, redder spots
            h += strength * 0.9 * spot
            e += strength * 0.9 * spot
        h = np.clip(h, 0, None) * m
        cur = self.h_nuc[sl]
        # overlapping nuclei both absorb: the overlap is darker than either
        self.h_nuc[sl] = np.maximum(cur, h) + 0.35 * np.minimum(cur, h)
        self.e_nuc[sl] += e * m
        self.nuc_cover[sl] = np.maximum(self.nuc_cover[sl], m)

    def membranes(self):
        """Faint cell borders between neighbouring epithelial cells (Voronoi edges)."""
        seeds = [n.center for n in self.nuclei if n.morph.site in ("gland", "nest")]
        if len(seeds) < 2:
            return
        marker = np.zeros(self.labels.shape, np.int32)
        for i, (y, x) in enumerate(seeds, start=1):
            yi, xi = int(round(y)), int(round(x))
            if 0 <= yi < self.size and 0 <= xi < self.size:
                marker[yi, xi] = i
        if marker.max() == 0:
            return
        _, (iy, ix) = ndi.distance_transform_edt(marker == 0, return_indices=True)
        near = marker[iy, ix]
        edge = np.zeros_like(near, bool)
        edge[:-1] |= near[:-1] != near[1:]
        edge[:, :-1] |= near[:, :-1] != near[:, 1:]
        edge &= self.epi & ~self.lumen
        self.e_bg[edge] += 0.12

    # -- image ----------------------------------------------------------------------------

    def render(self, stain, blur):
        rng = self.rng
        h_nuc = ndi.gaussian_filter(self.h_nuc, blur)
        e_nuc = ndi.gaussian_filter(self.e_nuc, blur)
        cover = ndi.gaussian_filter(self.nuc_cover, blur)
        # the nucleus displaces eosinophilic cytoplasm and matrix
        e = (self.e_bg + self.e_cyt) * (1 - 0.7 * cover) + e_nuc
        h = self.h_bg + self.h_cyt + h_nuc
        thickness = 1 + 0.08 * _smooth_noise(rng, h.shape, self.size / 5)
        hv = np.asarray(stain.h) / np.linalg.norm(stain.h)
        ev = np.asarray(stain.e) / np.linalg.norm(stain.e)
        od = (h[..., None] * hv * stain.h_gain + e[..., None] * ev * stain.e_gain) * thickness[..., None]
        # red blood cells: haemoglobin and eosin make them orange-red, not eosin-pink
        od += ndi.gaussian_filter(self.rbc, 0.8)[..., None] * _RBC * stain.e_gain
        img = np.asarray(stain.white) * np.exp(-od)
        img = ndi.gaussian_filter(img, (0.5, 0.5, 0))
        img += rng.normal(0, 2.0, img.shape)
        return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _composition(spec, tissue, rng, size, hierarchy):
    """Leaf of every nucleus of one tile (before placement)."""
    leaves = list(spec.leaf_freq)
    p = np.array([spec.leaf_freq[k] for k in leaves], float)
    for node, mult in tissue.leaf_scale.items():
        for i, leaf in enumerate(leaves):
            if leaf == node or node in hierarchy.ancestors(leaf):
                p[i] *= mult
    p /= p.sum()
    # tiles are heterogeneous (an infiltrate here, a necrotic focus there) but the
    # dataset-level mix stays the table's: a Dirichlet around it
    p = rng.dirichlet(p * 12 + 1e-3)
    mean = spec.density * tissue.density * (size / 256) ** 2 * math.exp(rng.normal(-0.08, 0.4))
    n = int(rng.poisson(mean))
    counts = rng.multinomial(n, p)
    return [leaf for leaf, c in zip(leaves, counts) for _ in range(c)]
