"""Draw one rendering of an entity with PIL and numpy.

Each rendering varies what does not identify the entity (position, rotation, exact scale, the
background and its clutter, colour jitter, pattern phase, noise) and keeps what does: shape, colour,
pattern and size class. Clutter is grey (unsaturated) and thin, so it never changes the colour or
shape answer; rotation stays within +-25 degrees, so a square never turns into a diamond; the two
size classes use disjoint radius ranges. Facts are never drawn.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

COLOURS_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (245, 140, 25),
    "yellow": (240, 215, 35),
    "green": (40, 165, 60),
    "cyan": (35, 200, 215),
    "blue": (40, 75, 215),
    "purple": (135, 55, 190),
    "pink": (245, 125, 190),
}
RADIUS_RANGES = {"small": (0.17, 0.23), "large": (0.32, 0.40)}
"""Shape radius as a fraction of the image side, per size class (disjoint on purpose)."""
MAX_ROTATION_DEGREES = 25.0
SUPERSAMPLE = 4
SCENE_SCALE = 0.5
"""A scene's creatures are drawn at half their single-image size, so two fit side by side."""
PATTERN_DARKEN = 0.35
"""Pattern marks are the shape's own colour, darkened: the hue (the colour answer) is kept."""


def _unit_polygon(shape: str) -> np.ndarray:
    """Outline of ``shape`` with radius about 1 around the origin, as an (n, 2) array (y down)."""
    if shape == "circle":
        angles = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if shape == "square":
        return np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]])
    if shape == "triangle":
        angles = -math.pi / 2 + np.arange(3) * 2 * math.pi / 3
        return np.stack([np.cos(angles), np.sin(angles) + 0.15], axis=1)
    if shape == "hexagon":
        angles = np.arange(6) * 2 * math.pi / 6
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if shape == "star":
        angles = -math.pi / 2 + np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    if shape == "diamond":
        return np.array([[0.0, -1.0], [0.6, 0.0], [0.0, 1.0], [-0.6, 0.0]])
    if shape == "cross":
        a, b = 0.3, 0.95
        return np.array(
            [[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b], [-a, a], [-b, a], [-b, -a], [-a, -a]]
        )
    if shape == "heart":
        t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return np.stack([x, y + 2.5], axis=1) / 17.0
    raise ValueError(f"unknown shape {shape!r}")


def _shape_mask(shape: str, size: int, centre: tuple[float, float], radius: float, angle: float) -> np.ndarray:
    """Anti-aliased coverage (size, size) in [0, 1] of the rotated, scaled, translated shape."""
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = (_unit_polygon(shape) @ rotation.T) * radius + np.array(centre)
    big = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    ImageDraw.Draw(big).polygon([(float(x), float(y)) for x, y in points * SUPERSAMPLE], fill=255)
    return np.asarray(big.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0


def _pattern_mask(
    pattern: str, size: int, centre: tuple[float, float], radius: float, angle: float, phase: tuple[float, float]
) -> np.ndarray:
    """1 where the pattern marks the shape, in the shape's own rotated frame (it turns with the shape)."""
    if pattern == "solid":
        return np.zeros((size, size), dtype=np.float32)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = xs - centre[0], ys - centre[1]
    u = (math.cos(angle) * dx + math.sin(angle) * dy) / radius + phase[0]
    v = (-math.sin(angle) * dx + math.cos(angle) * dy) / radius + phase[1]
    period = 0.55
    if pattern == "striped":
        marks = np.floor(u / (period / 2)) % 2 == 0
    elif pattern == "dotted":
        du = (u % period) - period / 2
        dv = (v % period) - period / 2
        marks = du**2 + dv**2 < 0.15**2
    elif pattern == "checkered":
        marks = (np.floor(u / (period / 2)) + np.floor(v / (period / 2))) % 2 == 0
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return marks.astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Light, nearly grey gradient with grey clutter (lines, boxes, rings); (size, size, 3) float."""
    base = rng.uniform(150, 235)
    tint = rng.uniform(-8, 8, size=3)
    gradient = np.linspace(-1, 1, size, dtype=np.float32)
    direction = rng.uniform(-12, 12, size=2)
    field = base + direction[0] * gradient[None, :] + direction[1] * gradient[:, None]
    image = Image.fromarray(np.clip(field[..., None] + tint, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):
        grey = int(rng.integers(80, 250))
        colour = (grey, grey, grey)
        kind = int(rng.integers(3))
        x0, y0 = (float(c) for c in rng.uniform(0, size, size=2))
        extent = float(rng.uniform(0.05, 0.18)) * size
        if kind == 0:
            x1, y1 = (float(c) for c in rng.uniform(0, size, size=2))
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 3)))
        elif kind == 1:
            draw.rectangle([x0, y0, x0 + extent, y0 + extent * float(rng.uniform(0.3, 1.0))], outline=colour)
        else:
            draw.ellipse([x0, y0, x0 + extent, y0 + extent], outline=colour)
    return np.asarray(image, dtype=np.float32)


def render_entity(attributes: dict[str, str], rng: np.random.Generator, image_size: int = 64) -> Image.Image:
    """Draw one rendering of an entity with ``attributes`` (shape, colour, pattern, size) as RGB."""
    low, high = RADIUS_RANGES[attributes["size"]]
    radius = float(rng.uniform(low, high)) * image_size
    margin = radius + 1.0
    centre = (float(rng.uniform(margin, image_size - margin)), float(rng.uniform(margin, image_size - margin)))
    return _finish(rng, image_size, [_creature(attributes, rng, image_size, centre, radius)], _background)


def render_scene(looks: list[dict[str, str]], rng: np.random.Generator, image_size: int = 64,
                 scale: float = SCENE_SCALE) -> Image.Image:
    """Draw a scene: the creatures of ``looks`` side by side, each in its own vertical strip of the image,
    drawn at ``scale`` times their single-image size (size classes keep their order within a scene)."""
    strip = image_size / len(looks)
    creatures = []
    for index, look in enumerate(looks):
        low, high = RADIUS_RANGES[look["size"]]
        radius = float(rng.uniform(low, high)) * image_size * scale
        margin = radius + 1.0
        left, right = index * strip + margin, (index + 1) * strip - margin
        centre = (float(rng.uniform(left, max(left, right))), float(rng.uniform(margin, image_size - margin)))
        creatures.append(_creature(look, rng, image_size, centre, radius))
    return _finish(rng, image_size, creatures, _background)


def _creature(attributes: dict[str, str], rng: np.random.Generator, image_size: int, centre: tuple[float, float],
              radius: float) -> tuple[np.ndarray, np.ndarray, float]:
    """One creature's (coverage, colour per pixel) for compositing, drawing its pose and colour jitter."""
    angle = math.radians(float(rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES)))
    phase = (float(rng.uniform(0, 1)), float(rng.uniform(0, 1)))
    jitter = rng.uniform(-12, 12, size=3)
    noise_sigma = float(rng.uniform(2, 7))
    fill = np.clip(np.array(COLOURS_RGB[attributes["colour"]], dtype=np.float32) + jitter, 0, 255)
    coverage = _shape_mask(attributes["shape"], image_size, centre, radius, angle)[..., None]
    marks = _pattern_mask(attributes["pattern"], image_size, centre, radius, angle, phase)[..., None]
    return coverage, fill * (1 - marks) + fill * PATTERN_DARKEN * marks, noise_sigma


def _finish(rng: np.random.Generator, image_size: int, creatures: list, background) -> Image.Image:
    """Composite ``creatures`` over a new background, add sensor noise (the first creature's sigma)."""
    pixels = background(rng, image_size)
    for coverage, colour, _ in creatures:
        pixels = pixels * (1 - coverage) + colour * coverage
    pixels += rng.normal(0.0, creatures[0][2], size=pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
