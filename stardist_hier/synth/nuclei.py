"""One nucleus: its geometry in its own frame (:class:`_Nucleus`), drawn from its leaf's :class:`Morphology`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .specs import MORPHOLOGY, Morphology


# ----------------------------------------------------------------------------------------
# Geometry helpers


def _rotate(dy, dx, angle):
    c, s = math.cos(angle), math.sin(angle)
    return dx * c + dy * s, -dx * s + dy * c


def _disc(dy, dx, r):
    return dy * dy + dx * dx <= r * r


def _segment_dist(u, v, p, q):
    """Distance of points (u, v) to the segment p-q."""
    pu, pv = p
    du, dv = q[0] - pu, q[1] - pv
    t = np.clip(((u - pu) * du + (v - pv) * dv) / (du * du + dv * dv + 1e-9), 0, 1)
    return np.hypot(u - pu - t * du, v - pv - t * dv)


def _harmonics(rng, amp, kmax=5):
    """Random contour harmonics: radius factor 1 + sum a_k cos(k theta + phi_k)."""
    if amp <= 0:
        return []
    return [(k, amp * rng.normal(0, 1) / k ** 0.8, rng.uniform(0, 2 * math.pi)) for k in range(2, kmax + 1)]


def _radial_factor(theta, harm):
    f = np.ones_like(theta)
    for k, a, phi in harm:
        f += a * np.cos(k * theta + phi)
    return np.maximum(f, 0.35)


# ----------------------------------------------------------------------------------------
# Nuclei


@dataclass
class _Nucleus:
    """Geometry of one nucleus in its own frame (u along the long axis)."""

    leaf: str
    morph: Morphology
    a: float
    b: float
    hema: float
    harm: list = field(default_factory=list)
    bend: float = 0.0
    lobes: list = field(default_factory=list)     # (u, v, r) for lobed / fragmented
    notch: float = 0.0
    taper: float = 1.4
    power: float = 2.0
    nucleoli: list = field(default_factory=list)  # (u, v, r)
    angle: float = 0.0
    center: tuple = (0.0, 0.0)

    @property
    def radius(self):
        ext = max(self.a, self.b)
        if self.lobes:
            ext = max(ext, max(math.hypot(u, v) + r for u, v, r in self.lobes))
        return ext * 1.25 + abs(self.bend) * ext * ext + 1

    def inside(self, dy, dx):
        """Boolean mask of the nucleus on local offsets (dy, dx) from its centre."""
        u, v = _rotate(dy, dx, self.angle)
        shape = self.morph.shape
        v = v - self.bend * u * u
        if shape in ("lobed",) or (shape == "dead" and self.lobes):
            m = np.zeros(u.shape, bool)
            for i, (lu, lv, r) in enumerate(self.lobes):
                m |= _disc(v - lv, u - lu, r)
                if shape == "lobed" and i:
                    # thin chromatin strands keep the lobes one connected nucleus
                    m |= _segment_dist(u, v, self.lobes[i - 1][:2], (lu, lv)) <= 1.1
            return m
        if shape in ("spindle", "flat"):
            w = self.b * np.clip(1 - (u / self.a) ** 2, 0, None) ** self.taper
            return (np.abs(v) <= w) & (np.abs(u) < self.a)
        if shape == "blunt":
            return (np.abs(u / self.a) ** self.power + np.abs(v / self.b) ** self.power) <= 1
        # ellipse, kidney, pyknotic dead
        theta = np.arctan2(v / self.b, u / self.a)
        rho = np.hypot(u / self.a, v / self.b) / _radial_factor(theta, self.harm)
        m = rho <= 1
        if shape == "kidney":
            m &= np.hypot(u / (0.55 * self.a), (v - 1.05 * self.b) / (0.62 * self.b)) > 1
        return m


def _make_nucleus(leaf, rng, scale):
    m = MORPHOLOGY[leaf]

    def draw(mean_cv, lo=0.5):
        mean, cv = mean_cv
        return float(mean * scale * max(lo, rng.normal(1, cv)))

    a, b = draw(m.a), draw(m.b)
    if b > a:
        a, b = b, a
    nuc = _Nucleus(leaf, m, a, b, hema=float(m.hema[0] * max(0.3, rng.normal(1, m.hema[1]))))
    nuc.harm = _harmonics(rng, m.irregular)
    nuc.bend = float(rng.normal(0, m.bend)) if m.bend else 0.0
    if m.shape == "lobed":
        # lobes on an arc (horseshoe / "S" of a segmented nucleus), joined by strands
        n = int(rng.integers(m.lobes[0], m.lobes[1] + 1))
        spacing = a * rng.uniform(1.45, 1.8)
        arc_r = spacing * rng.uniform(1.1, 1.8) * (1 if n > 2 else 4)
        step = spacing / arc_r
        t0 = -step * (n - 1) / 2
        nuc.lobes = [(float(arc_r * math.sin(t0 + i * step) + rng.normal(0, 0.5)),
                      float(arc_r * (1 - math.cos(t0 + i * step)) + rng.normal(0, 0.5)),
                      float(a * rng.uniform(0.85, 1.1))) for i in range(n)]
    elif m.shape == "dead" and rng.random() < 0.4:
        # karyorrhexis: touching fragments; each new one touches an earlier one so the
        # nucleus stays one connected region
        frags = [(0.0, 0.0, a * 0.62)]
        for _ in range(int(rng.integers(2, 5))):
            pu, pv, pr = frags[rng.integers(len(frags))]
            r = a * rng.uniform(0.45, 0.65)
            t = rng.uniform(0, 2 * math.pi)
            d = (pr + r) * 0.75
            frags.append((pu + d * math.cos(t), pv + d * math.sin(t), r))
        nuc.lobes = frags
        nuc.hema *= 0.9
    elif m.shape == "spindle":
        nuc.taper = float(rng.uniform(1.2, 1.8))
    elif m.shape == "flat":
        nuc.taper = float(rng.uniform(0.45, 0.7))
    elif m.shape == "blunt":
        nuc.power = float(rng.uniform(2.8, 4.0))
    lo, hi, _ = m.nucleoli
    for _ in range(int(rng.integers(lo, hi + 1))):
        nuc.nucleoli.append((float(rng.uniform(-0.4, 0.4) * a), float(rng.uniform(-0.35, 0.35) * b),
                             float(rng.uniform(1.2, 2.2) * scale * (1.2 if leaf == "malignant_epithelial" else 0.8))))
    return nuc
