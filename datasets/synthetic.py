"""Embedded demo benchmark: shapes pasted on backgrounds, with exact ground-truth masks.

Built from a seed alone (nothing shipped, nothing downloaded) so that a newcomer can watch
DFB work on a laptop CPU. DFB trains a (K+1)-class dense network — object pixels are class k,
everything else is "background" — and scores OOD images by their background logit. The
benchmark is built to exercise exactly that:

* ID: K = 6 shapes (``CLASS_NAMES``) with random colour, size (15–45 % of the image where
  the shape allows), aspect, position and rotation, on backgrounds from a family of smooth
  "landscape-like" fields (colour gradients, low-frequency noise, horizons, radial glows).
  Object colours are drawn per instance from one palette shared by all classes, so only the
  shape tells the classes apart.
* ``SynthNewObjects`` (foreground shift): unseen shapes on the same background family.
* ``SynthNewBackgrounds`` (background shift): no object; textures never seen in training
  (stripes, checkerboards, dots, wood grain, grain noise).
* ``SynthClutter``: an ID background with small fragments (strokes, blobs, arcs, corners)
  in object colours, but no complete object.

Rendering is vectorised numpy at twice the output size; averaging 2x2 blocks then gives
antialiased edges and, for the masks, each pixel's object coverage (a pixel belongs to the
object when at least half of it is covered).

Every image has its own generator seeded by (seed, split, class, index), so the files do
not depend on generation order, and the same seed gives byte-identical files.
"""
import functools
import json
import shutil
from pathlib import Path

import numpy as np

from datasets.masks import IGNORE_INDEX
from utils.base.io import save_png_atomic, write_text_atomic

CLASS_NAMES = ("cross", "disc", "ring", "square", "star", "triangle")  # sorted: index = mask value
NUM_CLASSES = len(CLASS_NAMES)
BACKGROUND = NUM_CLASSES  # mask value of background pixels
NOVEL_SHAPES = ("arrow", "bowtie", "crescent", "heart", "hexagon")
OOD_SETS = {  # OOD set name -> its single class folder
    "SynthNewObjects": "objects",
    "SynthNewBackgrounds": "textures",
    "SynthClutter": "clutter",
}
ID_NAME = "synthetic"
MARKER_NAME = ".complete"
GENERATOR_VERSION = 1  # bump whenever rendering changes, so old marker files stop matching

_SUPERSAMPLE = 2
_MIN_SIZE = 16
_MIN_COVERAGE, _MAX_COVERAGE = 0.15, 0.45
_MAX_EXTENT = 0.95  # farthest an object may reach from its centre, in half-image widths
_MIN_CONTRAST = 90.0  # least RGB distance between an object and the background under it

# Muted "nature" colours for ID backgrounds; saturated and extreme colours for objects.
_BACKGROUND_PALETTE = np.array([
    (135, 170, 210), (185, 205, 225), (220, 215, 195), (200, 180, 130), (90, 140, 70),
    (55, 95, 55), (120, 90, 60), (140, 140, 140), (200, 145, 120), (60, 110, 140),
], dtype=np.float64)
_OBJECT_PALETTE = np.array([
    (220, 40, 40), (240, 140, 20), (240, 220, 40), (40, 190, 60), (40, 200, 220),
    (40, 70, 220), (210, 50, 200), (120, 50, 170), (245, 245, 245), (20, 20, 20),
], dtype=np.float64)


# ----------------------------------------------------------------------------- geometry

@functools.lru_cache(maxsize=8)
def _grid(n):
    """Pixel-centre coordinates of an n x n image in [-1, 1]; x to the right, y downwards."""
    t = (np.arange(n) + 0.5) / n * 2.0 - 1.0
    y, x = np.meshgrid(t, t, indexing="ij")
    y.setflags(write=False)
    x.setflags(write=False)
    return x, y


def _rotate(x, y, angle):
    c, s = np.cos(angle), np.sin(angle)
    return c * x + s * y, -s * x + c * y


def _regular_polygon(u, v, n_sides):
    """Regular n-gon with circumradius 1 and a vertex on +u: r·cos(φ) ≤ cos(π/n), φ the
    angle to the nearest edge normal."""
    sector = 2.0 * np.pi / n_sides
    phi = np.mod(np.arctan2(v, u), sector) - sector / 2.0
    return np.hypot(u, v) * np.cos(phi) <= np.cos(np.pi / n_sides)


def _star(u, v, points=5, inner=0.45):
    """Star polygon: outer vertices at radius 1, inner ones at `inner`. Folding the angle
    into [0, π/points] reduces the test to one side of one edge."""
    half = np.pi / points
    phi = np.mod(np.arctan2(v, u), 2.0 * half)
    phi = np.minimum(phi, 2.0 * half - phi)
    r = np.hypot(u, v)
    px, py = r * np.cos(phi), r * np.sin(phi)
    ax, ay = 1.0, 0.0
    bx, by = inner * np.cos(half), inner * np.sin(half)
    # Inside when the point is on the origin's side of the edge A→B (the origin gives > 0).
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax) >= 0.0


def _cross(u, v, half_width=0.3):
    half_length = np.sqrt(1.0 - half_width ** 2)
    au, av = np.abs(u), np.abs(v)
    return ((au <= half_width) & (av <= half_length)) | ((av <= half_width) & (au <= half_length))


def _heart(u, v):
    # The classic heart curve (x² + y² − 1)³ ≤ x²·y³, y pointing up.
    x, y = u * 1.2, -v * 1.2 + 0.2
    return (x * x + y * y - 1.0) ** 3 - x * x * y ** 3 <= 0.0


def _arrow(u, v):
    shaft = (u >= -0.95) & (u <= 0.15) & (np.abs(v) <= 0.2)
    head = (u >= 0.1) & (u <= 0.95) & (np.abs(v) <= 0.65 * (0.95 - u) / 0.85)
    return shaft | head


# Each shape is a predicate on local coordinates; the size is set from its measured area.
_SHAPES = {
    "cross": _cross,
    "disc": lambda u, v: u * u + v * v <= 1.0,
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.55 ** 2),
    "square": lambda u, v: (np.abs(u) <= 0.72) & (np.abs(v) <= 0.72),
    "star": _star,
    "triangle": lambda u, v: _regular_polygon(u, v, 3),
    "arrow": _arrow,
    "bowtie": lambda u, v: (np.abs(v) <= 0.85 * np.abs(u)) & (np.abs(u) <= 0.75),
    "crescent": lambda u, v: (u * u + v * v <= 1.0) & ((u - 0.45) ** 2 + v * v >= 0.8 ** 2),
    "heart": _heart,
    "hexagon": lambda u, v: _regular_polygon(u, v, 6),
}


@functools.lru_cache(maxsize=None)
def _shape_extent(name):
    """(area, largest distance from the origin) of a shape in local units, measured on a
    fine grid so that every shape, however defined, is scaled the same way."""
    n = 800
    t = (np.arange(n) + 0.5) / n * 3.0 - 1.5
    v, u = np.meshgrid(t, t, indexing="ij")
    inside = _SHAPES[name](u, v)
    area = inside.mean() * 9.0
    radius = np.hypot(u, v)[inside].max()
    return float(area), float(radius)


def _place_shape(rng, name, n):
    """Boolean n x n mask of one randomly scaled, stretched, rotated and placed shape.

    Scale s follows a coverage c ~ U(0.15, 0.45) of the image: area·s² = 4c (the image
    spans [-1, 1]²), capped so the shape stays inside the frame.
    """
    area, radius = _shape_extent(name)
    stretch = np.sqrt(rng.uniform(0.8, 1.25))  # area-preserving aspect change
    reach = radius * max(stretch, 1.0 / stretch)
    coverage = rng.uniform(_MIN_COVERAGE, _MAX_COVERAGE)
    scale = min(np.sqrt(4.0 * coverage / area), _MAX_EXTENT / reach)
    room = 1.0 - scale * reach
    cx, cy = rng.uniform(-room, room, size=2)
    x, y = _grid(n)
    u, v = _rotate(x - cx, y - cy, rng.uniform(0.0, 2.0 * np.pi))
    return _SHAPES[name](u / (scale * stretch), v * stretch / scale)


# --------------------------------------------------------------------------- colours

def _jitter(rng, colour, amount):
    return np.clip(colour + rng.uniform(-amount, amount, size=3), 0.0, 255.0)


def _background_colour(rng):
    return _jitter(rng, _BACKGROUND_PALETTE[rng.integers(len(_BACKGROUND_PALETTE))], 25.0)


def _contrasting_colour(rng, behind):
    """An object-palette colour (jittered) far enough from the mean colour `behind` it."""
    distance = np.linalg.norm(_OBJECT_PALETTE - behind, axis=1)
    choices = np.flatnonzero(distance >= _MIN_CONTRAST)
    if choices.size == 0:  # unreachable for mid-range backgrounds; keeps odd ones safe
        choices = np.array([int(np.argmax(distance))])
    return _jitter(rng, _OBJECT_PALETTE[rng.choice(choices)], 20.0)


# ------------------------------------------------------------------------ backgrounds

@functools.lru_cache(maxsize=32)
def _interpolation_matrix(n_out, n_in):
    """[n_out, n_in] bilinear-interpolation weights from n_in control points spread over
    the image to n_out pixels."""
    position = np.linspace(0.0, n_in - 1.0, n_out)
    low = np.minimum(np.floor(position).astype(int), n_in - 2)
    frac = position - low
    weights = np.zeros((n_out, n_in))
    weights[np.arange(n_out), low] = 1.0 - frac
    weights[np.arange(n_out), low + 1] = frac
    weights.setflags(write=False)
    return weights


def _smooth_noise(rng, n, cells, channels):
    """[n, n, channels] smooth random field: a cells x cells grid of N(0, 1) values,
    bilinearly interpolated."""
    grid = rng.standard_normal((channels, cells, cells))
    w = _interpolation_matrix(n, cells)
    return (w @ grid @ w.T).transpose(1, 2, 0)


def _gradient_background(rng, n):
    x, y = _grid(n)
    u, _ = _rotate(x, y, rng.uniform(0.0, 2.0 * np.pi))
    t = ((u / np.sqrt(2.0) + 1.0) / 2.0)[..., None]
    return (1.0 - t) * _background_colour(rng) + t * _background_colour(rng)


def _noise_field_background(rng, n):
    base = _background_colour(rng)
    return base + rng.uniform(15.0, 35.0) * _smooth_noise(rng, n, int(rng.integers(3, 6)), 3)


def _horizon_background(rng, n):
    """Sky above a wavy horizon, ground below, each with its own vertical shading."""
    x, y = _grid(n)
    horizon = (rng.uniform(-0.5, 0.5)
               + rng.uniform(0.0, 0.25) * np.sin(rng.uniform(1.0, 4.0) * x + rng.uniform(0, 2 * np.pi)))
    sky = _background_colour(rng) + rng.uniform(-40.0, 40.0) * (y[..., None] + 1.0) / 2.0
    ground = _background_colour(rng) + rng.uniform(-40.0, 40.0) * (y[..., None] + 1.0) / 2.0
    # A soft transition a few pixels wide: a horizon, not a sharp foreground-like edge.
    weight = 1.0 / (1.0 + np.exp(-(y - horizon) * n / 6.0))
    return (1.0 - weight[..., None]) * sky + weight[..., None] * ground


def _radial_background(rng, n):
    x, y = _grid(n)
    cx, cy = rng.uniform(-1.0, 1.0, size=2)
    t = np.clip(np.hypot(x - cx, y - cy) / rng.uniform(1.0, 2.5), 0.0, 1.0)[..., None]
    return (1.0 - t) * _background_colour(rng) + t * _background_colour(rng)


_ID_BACKGROUNDS = (_gradient_background, _noise_field_background, _horizon_background,
                   _radial_background)


def _id_background(rng, n):
    """One ID background: a random style, a little low-frequency variation and fine grain."""
    image = _ID_BACKGROUNDS[rng.integers(len(_ID_BACKGROUNDS))](rng, n)
    image = image + rng.uniform(0.0, 12.0) * _smooth_noise(rng, n, 4, 3)
    return image + rng.uniform(0.0, 3.0) * rng.standard_normal((n, n, 3))


# ---------------------------------------------------------------- OOD textures (unseen)

def _texture_colours(rng):
    """Two distinct colours, each from either palette, so colour alone does not give
    the background shift away."""
    def pick():
        palette = _BACKGROUND_PALETTE if rng.random() < 0.5 else _OBJECT_PALETTE
        return _jitter(rng, palette[rng.integers(len(palette))], 25.0)
    first = pick()
    second = pick()
    while np.linalg.norm(first - second) < 60.0:
        second = pick()
    return first, second


def _period(rng, n, low, high):
    """A spatial frequency in radians per unit for a period of low..high output pixels."""
    pixels = rng.uniform(low, high)
    return 2.0 * np.pi / (pixels * 2.0 / (n / _SUPERSAMPLE))


def _stripes(rng, n):
    x, y = _grid(n)
    u, _ = _rotate(x, y, rng.uniform(0.0, np.pi))
    wave = np.sin(_period(rng, n, 2.5, 6.0) * u + rng.uniform(0.0, 2 * np.pi))
    return 0.5 * (1.0 + np.tanh(3.0 * wave))


def _checkerboard(rng, n):
    x, y = _grid(n)
    u, v = _rotate(x, y, rng.uniform(0.0, np.pi / 2))
    frequency = _period(rng, n, 3.0, 8.0)
    return (np.sin(frequency * u) * np.sin(frequency * v) > 0.0).astype(np.float64)


def _dots(rng, n):
    x, y = _grid(n)
    u, v = _rotate(x, y, rng.uniform(0.0, np.pi / 2))
    spacing = 2.0 * np.pi / _period(rng, n, 4.0, 8.0)
    du = np.mod(u, spacing) - spacing / 2.0
    dv = np.mod(v, spacing) - spacing / 2.0
    return (np.hypot(du, dv) <= rng.uniform(0.25, 0.4) * spacing).astype(np.float64)


def _wood_grain(rng, n):
    """Rings around a far-off centre, warped by smooth noise, like sawn timber."""
    x, y = _grid(n)
    angle = rng.uniform(0.0, 2 * np.pi)
    distance = rng.uniform(1.5, 4.0)
    r = np.hypot(x - distance * np.cos(angle), y - distance * np.sin(angle))
    r = r + 0.08 * _smooth_noise(rng, n, 5, 1)[..., 0]
    return 0.5 * (1.0 + np.sin(_period(rng, n, 2.5, 5.0) * r))


def _grain_noise(rng, n):
    """Value noise at about one cell per one to two output pixels."""
    cells = int(rng.integers(n // (2 * _SUPERSAMPLE), n // _SUPERSAMPLE + 1))
    return np.clip(0.5 + 0.35 * _smooth_noise(rng, n, cells, 1)[..., 0], 0.0, 1.0)


_TEXTURES = (_stripes, _checkerboard, _dots, _wood_grain, _grain_noise)


def _texture_background(rng, n):
    pattern = _TEXTURES[rng.integers(len(_TEXTURES))](rng, n)[..., None]
    first, second = _texture_colours(rng)
    return (1.0 - pattern) * first + pattern * second


# ------------------------------------------------------------------------ clutter

def _segment(x, y, start, end, half_width):
    """Points within half_width of the segment start→end."""
    d = end - start
    t = np.clip(((x - start[0]) * d[0] + (y - start[1]) * d[1]) / max(d @ d, 1e-12), 0.0, 1.0)
    return np.hypot(x - start[0] - t * d[0], y - start[1] - t * d[1]) <= half_width


def _fragment(rng, n):
    """One small non-object mark: a stroke, a blob, an arc or a corner, in output pixels
    a few wide — far below the 15 % coverage of any object."""
    x, y = _grid(n)
    pixel = 2.0 / (n / _SUPERSAMPLE)  # one output pixel in grid units
    centre = rng.uniform(-0.85, 0.85, size=2)
    half_width = rng.uniform(0.35, 0.7) * pixel
    kind = rng.integers(4)
    if kind == 0:  # stroke
        angle = rng.uniform(0.0, np.pi)
        half = rng.uniform(1.5, 4.0) * pixel * np.array([np.cos(angle), np.sin(angle)])
        return _segment(x, y, centre - half, centre + half, half_width)
    if kind == 1:  # blob
        u, v = _rotate(x - centre[0], y - centre[1], rng.uniform(0.0, np.pi))
        a, b = rng.uniform(0.8, 2.2, size=2) * pixel
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if kind == 2:  # arc
        radius = rng.uniform(2.5, 5.0) * pixel
        u, v = _rotate(x - centre[0], y - centre[1], rng.uniform(0.0, 2 * np.pi))
        on_circle = np.abs(np.hypot(u, v) - radius) <= half_width
        return on_circle & (np.abs(np.arctan2(v, u)) <= rng.uniform(0.5, 1.3))
    arms = rng.uniform(2.0, 4.0, size=2) * pixel  # corner: two strokes from one point
    first, second = rng.uniform(0.0, 2 * np.pi) + np.array([0.0, rng.uniform(0.4, 1.6) * np.pi])
    end_a = centre + arms[0] * np.array([np.cos(first), np.sin(first)])
    end_b = centre + arms[1] * np.array([np.cos(second), np.sin(second)])
    return _segment(x, y, centre, end_a, half_width) | _segment(x, y, centre, end_b, half_width)


# ---------------------------------------------------------------------- composition

def _paint(rng, image, inside):
    """Fill the pixels `inside` with a contrasting colour, lightly shaded across the image."""
    if not inside.any():  # a fragment thinner than the sampling grid: nothing to paint
        return
    colour = _contrasting_colour(rng, image[inside].mean(axis=0))
    x, y = _grid(image.shape[0])
    u, _ = _rotate(x, y, rng.uniform(0.0, 2 * np.pi))
    shade = 1.0 + rng.uniform(0.0, 0.15) * u
    image[inside] = np.clip(colour * shade[inside][:, None], 0.0, 255.0)


def _to_output(image_hi, cover_hi, size, label, outside=BACKGROUND):
    """Average 2x2 blocks: antialiased uint8 image, and the label where a pixel is at least
    half covered."""
    k = _SUPERSAMPLE
    image = image_hi.reshape(size, k, size, k, 3).mean(axis=(1, 3))
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    coverage = cover_hi.reshape(size, k, size, k).mean(axis=(1, 3))
    mask = np.where(coverage >= 0.5, label, outside).astype(np.uint8)
    return image, mask


def _check_size(size):
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < _MIN_SIZE:
        raise ValueError(f"size: expected an integer >= {_MIN_SIZE}, got {size!r}")


def _object_on_background(rng, shape, size, label):
    n = size * _SUPERSAMPLE
    image = _id_background(rng, n)
    inside = _place_shape(rng, shape, n)
    _paint(rng, image, inside)
    return _to_output(image, inside, size, label)


def render_id_sample(rng, class_index, size=32):
    """One ID image of class `CLASS_NAMES[class_index]` and its true mask.

    Returns (image uint8 [size, size, 3], mask uint8 [size, size]); mask = class_index on
    object pixels, BACKGROUND (= K) elsewhere.
    """
    _check_size(size)
    if not 0 <= class_index < NUM_CLASSES:
        raise ValueError(f"class_index: expected 0..{NUM_CLASSES - 1}, got {class_index!r}")
    return _object_on_background(rng, CLASS_NAMES[class_index], size, class_index)


def render_new_object_sample(rng, size=32):
    """An unseen shape on an ID background; its pixels are IGNORE_INDEX (255) in the mask, since
    they are neither an ID class nor background."""
    _check_size(size)
    shape = NOVEL_SHAPES[rng.integers(len(NOVEL_SHAPES))]
    return _object_on_background(rng, shape, size, IGNORE_INDEX)


def render_new_background_sample(rng, size=32):
    """An unseen texture and no object: the mask is all BACKGROUND."""
    _check_size(size)
    n = size * _SUPERSAMPLE
    image = _texture_background(rng, n)
    return _to_output(image, np.zeros((n, n), dtype=bool), size, BACKGROUND)


def render_clutter_sample(rng, size=32):
    """An ID background with 3–8 small fragments, no object: the mask is all BACKGROUND."""
    _check_size(size)
    n = size * _SUPERSAMPLE
    image = _id_background(rng, n)
    for _ in range(rng.integers(3, 9)):
        _paint(rng, image, _fragment(rng, n))
    return _to_output(image, np.zeros((n, n), dtype=bool), size, BACKGROUND)


_OOD_RENDERERS = {
    "SynthNewObjects": render_new_object_sample,
    "SynthNewBackgrounds": render_new_background_sample,
    "SynthClutter": render_clutter_sample,
}


def render_ood_sample(rng, ood_set, size=32):
    """One image of the OOD set named `ood_set` (a key of OOD_SETS) and its mask."""
    if ood_set not in _OOD_RENDERERS:
        raise ValueError(f"ood_set: expected one of {sorted(OOD_SETS)}, got {ood_set!r}")
    return _OOD_RENDERERS[ood_set](rng, size)


# ------------------------------------------------------------------------- writing

_STREAMS = {"train": 0, "test": 1, **{name: 2 + i for i, name in enumerate(OOD_SETS)}}


def image_rng(seed, stream, class_index, index):
    """The generator of one image: seeded by (seed, stream, class, index) only, so each
    image is the same whatever else is generated, in whatever order."""
    return np.random.default_rng([seed, _STREAMS[stream], class_index, index])


def _check_count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def benchmark_paths(root):
    """Where each set of the benchmark lives under `root`."""
    root = Path(root)
    id_root = root / ID_NAME
    return {
        "id_train": id_root / "train",
        "id_test": id_root / "test",
        "gtmask_train": id_root / "train_gtmask",
        "gtmask_test": id_root / "test_gtmask",
        "ood": {name: root / name / "test" for name in OOD_SETS},
        "marker": id_root / MARKER_NAME,
    }


def _read_marker(path):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def generate_benchmark(root, seed=0, size=32, n_train_per_class=400, n_test_per_class=100,
                       n_ood=600, progress=True):
    """Write the demo benchmark under `root` (ImageFolder layout) and return its paths.

    Layout: ``<root>/synthetic/{train,test}/<class>/<index:05d>.png``, true masks in
    ``<root>/synthetic/{train,test}_gtmask/<class>/<index:05d>.png`` (value = class index
    in sorted class order, K = background), and ``<root>/<OOD set>/test/<folder>/*.png``.

    A marker ``<root>/synthetic/.complete`` records the parameters once everything is
    written; a call with the same parameters returns at once, a call with other parameters
    deletes the benchmark's folders and writes them anew.

    Returns benchmark_paths(root) plus ``counts`` (images per set), ``params`` (what the
    marker records) and ``reused`` (True when the existing files were kept).
    """
    _check_size(size)
    _check_count("seed", seed, 0)
    _check_count("n_train_per_class", n_train_per_class, 1)
    _check_count("n_test_per_class", n_test_per_class, 1)
    _check_count("n_ood", n_ood, 1)
    paths = benchmark_paths(root)
    params = {"version": GENERATOR_VERSION, "seed": int(seed), "size": int(size),
              "n_train_per_class": int(n_train_per_class),
              "n_test_per_class": int(n_test_per_class), "n_ood": int(n_ood)}
    counts = {"id_train": NUM_CLASSES * n_train_per_class,
              "id_test": NUM_CLASSES * n_test_per_class,
              **{name: n_ood for name in OOD_SETS}}
    result = {**paths, "counts": counts, "params": params}
    if _read_marker(paths["marker"]) == params:
        return {**result, "reused": True}

    # Stale or partial files would mix two parameter sets: start from empty folders.
    for folder in (paths["id_train"].parent, *(p.parent for p in paths["ood"].values())):
        if folder.exists():
            shutil.rmtree(folder)

    jobs = [(split, k, i) for split, n in (("train", n_train_per_class), ("test", n_test_per_class))
            for k in range(NUM_CLASSES) for i in range(n)]
    jobs += [(name, 0, i) for name in OOD_SETS for i in range(n_ood)]
    from tqdm import tqdm
    for stream, k, i in tqdm(jobs, desc="synthetic benchmark", disable=not progress):
        rng = image_rng(seed, stream, k, i)
        stem = f"{i:05d}.png"
        if stream in OOD_SETS:
            image, _ = render_ood_sample(rng, stream, size)
            save_png_atomic(paths["ood"][stream] / OOD_SETS[stream] / stem, image)
        else:
            image, mask = render_id_sample(rng, k, size)
            save_png_atomic(paths[f"id_{stream}"] / CLASS_NAMES[k] / stem, image)
            save_png_atomic(paths[f"gtmask_{stream}"] / CLASS_NAMES[k] / stem, mask)
    write_text_atomic(paths["marker"], json.dumps(params, indent=2, sort_keys=True) + "\n")
    return {**result, "reused": False}
