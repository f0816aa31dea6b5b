"""The procedural renderer: draws a character (:mod:`.identity`) in one frame's state (:mod:`.timeline`) as an
anti-aliased upper-body cartoon, and renders whole clips with their per-frame truth.

Shapes are polygons in image-fraction units, so every output size draws the same picture. They are filled at
``SUPERSAMPLE`` times the output size with Pillow's ImageDraw and box-reduced, which gives each edge pixel its
exact coverage (true anti-aliasing, no blur). The head is a 2.5D layer: each feature has a depth, so yaw and
pitch slide the nose and eyes further than the face outline (parallax) and ears and back hair the other way;
roll turns the head about the neck.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from avatar_backend.media.resample import MODEL_SAMPLE_RATE

from .identity import RGB, CharacterIdentity, identity_from_seed
from .timeline import ACTIONS, EMOTIONS, Event, plan_performance

SUPERSAMPLE = 4
SIZES = (64, 128, 192, 256)
HEAD_CENTRE = (0.5, 0.45)
NECK_PIVOT = (0.0, 0.24)             # head-local point the head rolls about
PARALLAX = 0.11                      # image fractions a feature of depth 1 slides per radian of yaw/pitch
HEAD_SHIFT = 0.035                   # ... and the whole head
MOUTH_Y = 0.148                      # head-local mouth centre, below the head centre
MOUTH_MAX_OPEN = 0.07                # opening height of a fully open mouth
MOUTH_INTERIOR: RGB = (22, 8, 12)    # much darker than any skin tone: the mouth measure counts it
TEETH: RGB = (240, 236, 228)
EYE_WHITE: RGB = (250, 248, 244)
LASH: RGB = (46, 30, 28)

# Per emotion at intensity 1: brow raise and inner-end raise (in brow units), mouth-corner curve (+ smiles),
# upper/lower eyelid opening change (fractions), brows drawn together.
EMOTION_SHAPES: dict[str, dict[str, float]] = {
    "neutral": {},
    "happy": {"brow_raise": 0.3, "curve": 1.0, "lid_low": -0.45, "lid_up": -0.1, "mouth_wide": 0.18},
    "sad": {"brow_inner": 1.0, "brow_raise": -0.1, "curve": -0.8, "lid_up": -0.35},
    "angry": {"brow_raise": -0.45, "brow_inner": -1.2, "together": 1.0, "curve": -0.45, "lid_up": -0.3,
              "lid_low": -0.2},
    "surprised": {"brow_raise": 1.2, "brow_inner": 0.25, "lid_up": 0.45, "lid_low": 0.25},
}


def _shade(colour: RGB, factor: float) -> RGB:
    return tuple(int(np.clip(c * factor, 0, 255)) for c in colour)  # type: ignore[return-value]


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))  # type: ignore[return-value]


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 40, start: float = 0.0,
            end: float = 2 * math.pi) -> np.ndarray:
    """Points on an ellipse (or an arc of it), [n, 2]."""
    a = np.linspace(start, end, n, endpoint=end - start < 2 * math.pi - 1e-9)
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], axis=1)


def _rotate(points: np.ndarray, angle: float, about: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    p = points - about
    return np.stack([p[:, 0] * c - p[:, 1] * s, p[:, 0] * s + p[:, 1] * c], axis=1) + about


@dataclass
class HeadPose:
    yaw: float = 0.0       # radians, + turns towards the image's right
    pitch: float = 0.0     # radians, + looks down
    roll: float = 0.0      # radians, + tilts clockwise in the image
    dx: float = 0.0        # image fractions
    dy: float = 0.0

    def place(self, points: np.ndarray, depth: float, scale: float) -> np.ndarray:
        """Head-local points (image fractions, before ``scale``) to image fractions."""
        p = points * scale
        shift = np.array([self.yaw, self.pitch]) * (HEAD_SHIFT + PARALLAX * depth) * scale
        p = _rotate(p + shift, self.roll, (NECK_PIVOT[0] * scale, NECK_PIVOT[1] * scale))
        return p + (HEAD_CENTRE[0] + self.dx, HEAD_CENTRE[1] + self.dy)


class Painter:
    """Fills image-fraction polygons on the supersampled canvas."""

    def __init__(self, image: Image.Image) -> None:
        self.draw = ImageDraw.Draw(image)
        self.scale = image.width

    def polygon(self, points: np.ndarray, fill: RGB) -> None:
        if len(points) >= 3:
            self.draw.polygon((points * self.scale).ravel().tolist(), fill=fill)

    def line(self, points: np.ndarray, fill: RGB, width: float) -> None:
        w = max(1, int(round(width * self.scale)))
        self.draw.line((points * self.scale).ravel().tolist(), fill=fill, width=w, joint="curve")
        # Round caps, so thick strokes end softly.
        for end in (points[0], points[-1]):
            self.circle(end, width / 2, fill)

    def circle(self, centre: Sequence[float], radius: float, fill: RGB) -> None:
        x, y = centre[0] * self.scale, centre[1] * self.scale
        r = radius * self.scale
        self.draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)


def make_background(identity: CharacterIdentity, pixels: int) -> Image.Image:
    """The still backdrop at drawing resolution (drawn once per clip)."""
    base, light, dark = (np.array(c, np.float32) for c in identity.background_colours)
    y, x = np.mgrid[0:pixels, 0:pixels].astype(np.float32) / pixels
    style = identity.background
    if style == "radial":
        t = np.clip(np.sqrt((x - 0.5) ** 2 + (y - 0.38) ** 2) / 0.75, 0, 1)[..., None]
        rgb = light * (1 - t) + dark * t
    elif style == "vertical":
        t = y[..., None]
        rgb = light * (1 - t) + base * t
    elif style == "wall":
        # A wall with a skirting line and a darker floor strip behind the shoulders.
        rgb = np.where((y > 0.7)[..., None], dark, base * (0.9 + 0.1 * (1 - y[..., None])))
        rgb = np.where((np.abs(y - 0.7) < 0.012)[..., None], light, rgb)
    else:  # bokeh: soft blobs of light over a gradient
        t = y[..., None]
        rgb = base * (1 - t) + dark * t
        rng = np.random.default_rng([identity.seed, 0xB0])
        for _ in range(7):
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 0.8), rng.uniform(0.04, 0.12)
            blob = np.clip(1 - np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / r, 0, 1)[..., None] * 0.5
            rgb = rgb * (1 - blob) + light * blob
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


@dataclass
class FrameLayout:
    """Where things landed in one frame, in output pixels (x0, y0, x1, y1)."""

    mouth_box: tuple[int, int, int, int]
    eye_boxes: tuple[tuple[int, int, int, int], tuple[int, int, int, int]]
    brow_box: tuple[int, int, int, int]
    hand: tuple[float, float] = (-1.0, -1.0)   # the visible hand's centre, or -1 when no hand is shown


def _box(points: np.ndarray, size: int) -> tuple[int, int, int, int]:
    x0, y0 = np.floor(points.min(axis=0) * size).astype(int)
    x1, y1 = np.ceil(points.max(axis=0) * size).astype(int)
    clip = lambda v: int(min(max(v, 0), size))  # noqa: E731
    return (clip(x0), clip(y0), clip(x1), clip(y1))


class CharacterPainter:
    """Draws one identity; keeps what is the same in every frame (background, colours)."""

    def __init__(self, identity: CharacterIdentity, size: int) -> None:
        if not 16 <= size <= 1024:
            raise ValueError(f"size must be in [16, 1024], got {size}")
        self.identity = identity
        self.size = size
        self.pixels = size * SUPERSAMPLE
        self.background = make_background(identity, self.pixels)
        skin = identity.skin
        self.skin = skin
        self.skin_shade = _shade(skin, 0.86)
        self.hair = identity.hair
        self.hair_light = _mix(identity.hair, (255, 255, 255), 0.18)
        # Brows are the hair colour, darkened until they read against the skin (blond hair, deep skin).
        luminance = lambda c: 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]  # noqa: E731
        self.brow = _shade(identity.hair, min(0.85, 0.55 * luminance(skin) / max(luminance(identity.hair), 1.0)))

    # ----- one frame -----------------------------------------------------------------------------------
    def draw(self, state: dict[str, Any]) -> tuple[np.ndarray, FrameLayout]:
        """One frame [H, W, 3] uint8 of ``state`` (a row of the performance, see :func:`neutral_state`)."""
        ident = self.identity
        image = self.background.copy()
        paint = Painter(image)
        pose = HeadPose(float(state["yaw"]), float(state["pitch"]), float(state["roll"]),
                        float(state["offset"][0]), float(state["offset"][1]))
        scale = ident.head_scale
        emotion = EMOTIONS[int(state["emotion"])]
        shape = {k: v * float(state["emotion_intensity"]) for k, v in EMOTION_SHAPES[emotion].items()}
        place = lambda pts, depth: pose.place(np.asarray(pts, np.float64), depth, scale)  # noqa: E731

        if ident.hair_style in ("long", "bob"):
            self._back_hair_long(paint, place)
        self._body(paint, place, float(state["breath"]), pose)
        if ident.hair_style not in ("bald",):
            self._back_hair(paint, place)
        self._ears(paint, place)
        paint.polygon(place(self._face_outline(), 0.0), self.skin)
        # Cheeks: some characters always blush a little; joy adds more, in proportion to its intensity.
        blush = (0.25 if ident.blush else 0.0) + (0.35 * shape.get("curve", 0.0) if emotion == "happy" else 0.0)
        if blush > 0.0:
            colour = _mix(self.skin, (236, 130, 130), min(blush, 0.6))
            for side in (-1, 1):
                paint.polygon(place(ellipse(side * 0.125, 0.095, 0.04, 0.022, 20), 0.7), colour)
        eye_boxes = self._eyes(paint, place, state, shape)
        brow_box = self._brows(paint, place, shape)
        self._nose(paint, place)
        mouth_box = self._mouth(paint, place, state, shape)
        self._fringe(paint, place)
        self._hat(paint, place)
        self._glasses(paint, place)
        hand = self._arms(paint, place, state)

        frame = np.array(image.reduce(SUPERSAMPLE))
        layout = FrameLayout(mouth_box=mouth_box, eye_boxes=eye_boxes, brow_box=brow_box,
                             hand=(hand[0] * self.size, hand[1] * self.size) if hand is not None else (-1.0, -1.0))
        return frame, layout

    # ----- parts ---------------------------------------------------------------------------------------
    def _face_outline(self) -> np.ndarray:
        ident = self.identity
        a = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        c, s = np.cos(a), np.sin(a)
        power = {"square": 1.45, "round": 1.0, "oval": 1.0, "heart": 1.0, "long": 1.1}[ident.face_shape]
        x = ident.face_rx * np.sign(c) * np.abs(c) ** (1 / power)
        y = ident.face_ry * np.sign(s) * np.abs(s) ** (1 / power)
        lower = np.clip(s, 0, 1)
        taper = {"heart": 0.3, "square": 0.06, "round": 0.08}.get(ident.face_shape, 0.14)
        x = x * (1 - taper * lower ** 2)
        return np.stack([x, y], axis=1)

    def _body(self, paint: Painter, place, breath: float, pose: HeadPose) -> None:
        ident = self.identity
        rise = 0.009 * breath
        sway = pose.dx * 0.35
        cx = 0.5 + sway
        width = 0.46 * ident.shoulder_width * (1 + 0.012 * breath)
        top = 0.785 - rise
        # Neck: from under the jaw (moves with the head) down into the body.
        jaw = place([(-0.062, 0.15), (0.062, 0.15)], 0.0)
        neck = np.array([jaw[0], jaw[1], (cx + 0.07, top + 0.06), (cx - 0.07, top + 0.06)])
        style = ident.clothes_style
        if style == "hoodie":
            paint.polygon(ellipse(cx, top + 0.01, 0.15, 0.07, 30), _shade(ident.clothes, 0.8))
        paint.polygon(neck, self.skin)
        paint.polygon(place(ellipse(0.0, 0.17, 0.07, 0.04, 20), 0.0), self.skin_shade)
        torso = np.concatenate([
            ellipse(cx, top + 0.24, width, 0.24, 48, math.pi, 2 * math.pi),
            [(cx + width, 1.05), (cx - width, 1.05)],
        ])
        paint.polygon(torso, ident.clothes)
        if style == "tunic":
            paint.polygon(np.array([(cx - 0.094, top), (cx, top + 0.14), (cx + 0.094, top)]), ident.clothes_trim)
            paint.polygon(np.array([(cx - 0.07, top), (cx, top + 0.10), (cx + 0.07, top)]), self.skin_shade)
        elif style == "vneck":
            paint.polygon(np.array([(cx - 0.075, top - 0.005), (cx, top + 0.13), (cx + 0.075, top - 0.005)]),
                          self.skin)
        elif style == "collar":
            paint.polygon(np.array([(cx - 0.07, top), (cx, top + 0.05), (cx + 0.07, top)]), self.skin_shade)
            for side in (-1, 1):
                paint.polygon(np.array([(cx + side * 0.075, top - 0.01), (cx, top + 0.05),
                                        (cx + side * 0.11, top + 0.07)]), ident.clothes_trim)
        elif style == "hoodie":
            for side in (-1, 1):
                paint.line(np.array([(cx + side * 0.04, top + 0.04), (cx + side * 0.045, top + 0.16)]),
                           ident.clothes_trim, 0.008)
        elif style == "jacket":
            paint.polygon(np.array([(cx - 0.08, top), (cx + 0.08, top), (cx + 0.05, 1.05), (cx - 0.05, 1.05)]),
                          ident.clothes_trim)
            for side in (-1, 1):
                paint.polygon(np.array([(cx + side * 0.08, top - 0.005), (cx + side * 0.03, top + 0.16),
                                        (cx + side * 0.14, top + 0.05)]), _shade(ident.clothes, 0.75))

    def _back_hair_long(self, paint: Painter, place) -> None:
        ident = self.identity
        length = 0.36 if ident.hair_style == "long" else 0.16
        rx = ident.face_rx * 1.22
        outline = np.concatenate([
            ellipse(0, -0.03, rx, ident.face_ry * 1.12, 30, math.pi, 2 * math.pi),
            [(rx, length), (rx * 0.75, length + 0.03), (-rx * 0.75, length + 0.03), (-rx, length)],
        ])
        paint.polygon(place(outline, -0.3), _shade(self.hair, 0.85))

    def _back_hair(self, paint: Painter, place) -> None:
        ident = self.identity
        rx, ry = ident.face_rx * 1.19, ident.face_ry * 1.13
        style = ident.hair_style
        if style == "curly":
            for a in np.linspace(math.pi * 0.9, math.pi * 2.1, 11):
                centre = (rx * 0.92 * math.cos(a), -0.05 + ry * 0.95 * math.sin(a))
                paint.polygon(place(ellipse(*centre, 0.06, 0.06, 20), -0.3), self.hair)
        paint.polygon(place(ellipse(0, -0.047, rx, ry, 48), -0.3), self.hair)
        if style == "bun":
            paint.polygon(place(ellipse(0, -0.047 - ry * 1.02, 0.07, 0.06, 28), -0.3), self.hair)
        elif style == "spiky":
            for a in np.linspace(math.pi * 1.05, math.pi * 1.95, 8):
                base = np.array([math.cos(a), math.sin(a)])
                tip = base * (rx + 0.05, ry + 0.05) + (0, -0.047)
                side = np.array([-base[1], base[0]]) * 0.035
                root = base * (rx * 0.85, ry * 0.85) + (0, -0.047)
                paint.polygon(place(np.array([root - side, tip, root + side]), -0.3), self.hair)

    def _ears(self, paint: Painter, place) -> None:
        ident = self.identity
        for side in (-1, 1):
            x = side * (ident.face_rx + 0.004)
            paint.polygon(place(ellipse(x, 0.01, 0.034, 0.056, 24), -0.5), self.skin_shade)
            if ident.earrings != "none":
                lobe = place([(x, 0.066)], -0.5)[0]
                if ident.earrings == "stud":
                    paint.circle(lobe, 0.011, ident.earring_colour)
                else:
                    ring = place(ellipse(x, 0.088, 0.017, 0.022, 24), -0.5)
                    paint.line(np.concatenate([ring, ring[:1]]), ident.earring_colour, 0.006)

    def _eyes(self, paint: Painter, place, state, shape) -> tuple:
        ident = self.identity
        blink = float(state["blink"])
        gaze = np.asarray(state["gaze"], np.float64)
        rx, ry = ident.eye_rx, ident.eye_ry
        up = ry * float(np.clip(1 + shape.get("lid_up", 0.0), 0.08, 1.5)) * (1 - blink)
        low = ry * 0.85 * float(np.clip(1 + shape.get("lid_low", 0.0), 0.08, 1.3)) * (1 - blink)
        u = np.linspace(-1, 1, 17)
        bulge = np.sqrt(1 - u ** 2)
        upper_max, lower_max = ry * 1.55, ry * 1.15
        boxes = []
        for side in (-1, 1):
            centre = np.array([side * ident.eye_spacing, -0.008])
            tilt = -side * ident.eye_tilt

            def local(points: np.ndarray, tilt: float = tilt, centre: np.ndarray = centre) -> np.ndarray:
                return place(_rotate(points, tilt) + centre, 0.8)

            white = np.concatenate([np.stack([u * rx, -upper_max * bulge ** 0.8], 1),
                                    np.stack([u[::-1] * rx, lower_max * bulge[::-1] ** 0.8], 1)])
            paint.polygon(local(white), EYE_WHITE)
            iris_centre = np.array([gaze[0] * rx * 0.45, gaze[1] * ry * 0.6])
            iris_r = min(ry * 0.95, rx * 0.55)   # round eyes keep some white beside the iris
            paint.polygon(local(ellipse(*iris_centre, iris_r, iris_r, 24)), ident.iris)
            paint.polygon(local(ellipse(*iris_centre, iris_r * 0.5, iris_r * 0.5, 16)), (20, 18, 24))
            paint.polygon(local(ellipse(*(iris_centre + (iris_r * 0.35, -iris_r * 0.35)),
                                        iris_r * 0.22, iris_r * 0.22, 10)), (255, 255, 255))
            # Lids: skin from the current lid line out past the largest eye, hiding what the lid covers.
            wide = np.linspace(-1.2, 1.2, 19)
            outer = np.sqrt(np.clip(1 - (wide / 1.2) ** 2, 0, 1))
            upper_line = np.stack([u * rx, -up * bulge ** 0.8], 1)
            lower_line = np.stack([u * rx, low * bulge ** 0.8], 1)
            ends = np.array([(-1.2 * rx, 0.0)]), np.array([(1.2 * rx, 0.0)])
            upper_lid = np.concatenate([ends[0], upper_line, ends[1],
                                        np.stack([wide[::-1] * rx, -(upper_max + 0.01) * outer[::-1]], 1)])
            lower_lid = np.concatenate([ends[0], lower_line, ends[1],
                                        np.stack([wide[::-1] * rx, (lower_max + 0.01) * outer[::-1]], 1)])
            paint.polygon(local(upper_lid), self.skin)
            paint.polygon(local(lower_lid), self.skin)
            paint.line(local(upper_line), LASH, 0.0055)
            boxes.append(_box(local(white), self.size))
        return tuple(boxes)

    def _brows(self, paint: Painter, place, shape) -> tuple[int, int, int, int]:
        ident = self.identity
        raise_ = shape.get("brow_raise", 0.0) * 0.02
        inner = shape.get("brow_inner", 0.0) * 0.016
        together = shape.get("together", 0.0) * 0.008
        y = -0.008 - ident.eye_ry - 0.038
        points = []
        for side in (-1, 1):
            x_in, x_out = side * (ident.eye_spacing - ident.eye_rx * 0.85 - together), side * (
                ident.eye_spacing + ident.eye_rx * 1.1)
            brow = np.array([(x_in, y - raise_ - inner), ((x_in + x_out) / 2, y - raise_ - 0.007 - inner * 0.4),
                             (x_out, y - raise_ + 0.004)])
            placed = place(brow, 0.8)
            paint.line(placed, self.brow, ident.brow_thickness)
            points.append(placed)
        # A fixed-size region around the neutral brows, so emotions are compared over the same pixels.
        region = np.array([(-ident.eye_spacing - ident.eye_rx * 1.4, y - 0.05),
                           (ident.eye_spacing + ident.eye_rx * 1.4, y + 0.03)])
        return _box(place(region, 0.8), self.size)

    def _nose(self, paint: Painter, place) -> None:
        style = self.identity.nose
        if style == "line":
            paint.line(place([(0.0, 0.01), (-0.015, 0.085), (0.008, 0.095)], 1.2), self.skin_shade, 0.007)
        elif style == "button":
            paint.polygon(place(ellipse(0.0, 0.078, 0.022, 0.016, 20), 1.2), self.skin_shade)
            paint.polygon(place(ellipse(0.0, 0.074, 0.016, 0.011, 16), 1.2), _mix(self.skin, (255, 255, 255), 0.1))
        else:
            paint.polygon(place([(0.0, 0.0), (-0.02, 0.09), (0.0, 0.098), (0.012, 0.09)], 1.2), self.skin_shade)

    def _mouth(self, paint: Painter, place, state, shape) -> tuple[int, int, int, int]:
        ident = self.identity
        openness = float(state["mouth_open"])
        width = float(state["mouth_width"])
        curve = shape.get("curve", 0.0)
        half = ident.mouth_half_width * (0.78 + 0.42 * width + shape.get("mouth_wide", 0.0)) * (1 - 0.1 * openness)
        height = openness * MOUTH_MAX_OPEN
        u = np.linspace(-1, 1, 25)
        x = u * half
        centre_line = MOUTH_Y - curve * 0.02 * u ** 2
        # Rounded vowels make an oval opening, wide ones a flatter, boxier slit.
        profile = (1 - u ** 2) ** (0.55 - 0.25 * width)
        upper_inner = centre_line - 0.35 * height * profile
        lower_inner = centre_line + 0.65 * height * profile
        t = ident.lip_thickness
        upper_outer = upper_inner - t * (0.25 + 0.75 * profile ** 0.6)
        lower_outer = lower_inner + 1.3 * t * (0.25 + 0.75 * profile ** 0.6)
        lips = np.concatenate([np.stack([x, upper_outer], 1), np.stack([x[::-1], lower_outer[::-1]], 1)])
        depth = 0.9
        paint.polygon(place(lips, depth), ident.lip)
        if height > 0:
            interior = np.concatenate([np.stack([x, upper_inner], 1), np.stack([x[::-1], lower_inner[::-1]], 1)])
            paint.polygon(place(interior, depth), MOUTH_INTERIOR)
            teeth = np.concatenate([np.stack([x, upper_inner], 1),
                                    np.stack([x[::-1], (upper_inner + 0.22 * height * profile)[::-1]], 1)])
            paint.polygon(place(teeth, depth), TEETH)
        lip_line = np.stack([x * 1.02, centre_line], 1)
        paint.line(place(lip_line, depth), MOUTH_INTERIOR, 0.0055)
        # A fixed region that holds the mouth at any openness, width and expression.
        hw = ident.mouth_half_width * 1.5
        region = np.array([(-hw, MOUTH_Y - 0.05), (hw, MOUTH_Y + MOUTH_MAX_OPEN * 0.65 + 0.022)])
        corners = place(np.array([region[0], (region[1][0], region[0][1]), region[1], (region[0][0], region[1][1])]),
                        depth)
        return _box(corners, self.size)

    def _fringe(self, paint: Painter, place) -> None:
        ident = self.identity
        style = ident.hair_style
        rx, ry = ident.face_rx, ident.face_ry
        if style == "bald":
            return
        if style in ("short", "bun", "spiky", "curly"):
            # Locks end above the highest a surprised brow goes, so expressions stay visible.
            for cx, cy, erx, ery in ((-0.117, -0.21, 0.133, 0.086), (0.008, -0.24, 0.148, 0.086),
                                     (0.133, -0.205, 0.117, 0.086)):
                paint.polygon(place(ellipse(cx * rx / 0.203, cy * ry / 0.242, erx, ery, 32), 0.3), self.hair)
            paint.line(place(ellipse(-0.023, -0.219, 0.117, 0.0625, 12, 3.5, 5.6), 0.3), self.hair_light, 0.008)
        elif style in ("bob", "long"):
            band = np.concatenate([ellipse(0, -0.03, rx * 1.08, ry * 1.05, 30, math.pi, 2 * math.pi),
                                   [(rx * 1.0, -0.125), (-rx * 1.0, -0.125)]])
            paint.polygon(place(band, 0.3), self.hair)
        elif style == "side_part":
            paint.polygon(place(ellipse(0.05, -0.215, rx * 0.95, 0.1, 36), 0.3), self.hair)
            paint.polygon(place(ellipse(-0.12, -0.19, 0.09, 0.075, 24), 0.3), self.hair)

    def _hat(self, paint: Painter, place) -> None:
        ident = self.identity
        if ident.hat == "none":
            return
        rx, ry = ident.face_rx, ident.face_ry
        colour = ident.hat_colour
        if ident.hat == "beanie":
            dome = np.concatenate([ellipse(0, -0.12, rx * 1.15, ry * 0.95, 36, math.pi, 2 * math.pi),
                                   [(rx * 1.15, -0.12)]])
            paint.polygon(place(dome, 0.25), colour)
            band = np.array([(-rx * 1.18, -0.17), (rx * 1.18, -0.17), (rx * 1.18, -0.118), (-rx * 1.18, -0.118)])
            paint.polygon(place(band, 0.25), _shade(colour, 0.8))
        elif ident.hat == "brim":
            paint.polygon(place(ellipse(0, -0.15, rx * 1.75, 0.045, 40), 0.25), _shade(colour, 0.85))
            crown = np.concatenate([ellipse(0, -0.16, rx * 0.95, 0.17, 30, math.pi, 2 * math.pi),
                                    [(rx * 0.95, -0.15), (-rx * 0.95, -0.15)]])
            paint.polygon(place(crown, 0.25), colour)
        else:  # cap
            dome = ellipse(0, -0.14, rx * 1.12, ry * 0.75, 36, math.pi, 2 * math.pi)
            paint.polygon(place(np.concatenate([dome, [(rx * 1.12, -0.14)]]), 0.25), colour)
            paint.polygon(place(ellipse(0.03, -0.145, rx * 1.05, 0.025, 30), 0.35), _shade(colour, 0.75))

    def _glasses(self, paint: Painter, place) -> None:
        ident = self.identity
        if ident.glasses == "none":
            return
        rim = 0.0055
        for side in (-1, 1):
            cx, cy = side * ident.eye_spacing, -0.008
            if ident.glasses == "round":
                frame = ellipse(cx, cy, ident.eye_rx * 1.35, ident.eye_rx * 1.2, 32)
            else:
                w, h = ident.eye_rx * 1.4, ident.eye_rx * 1.0
                frame = np.array([(cx - w, cy - h), (cx + w, cy - h), (cx + w, cy + h), (cx - w, cy + h)])
            paint.line(place(np.concatenate([frame, frame[:1]]), 1.0), ident.glasses_colour, rim)
            temple = np.array([(side * (ident.eye_spacing + ident.eye_rx * 1.35), cy - 0.01),
                               (side * (ident.face_rx + 0.002), cy - 0.02)])
            paint.line(place(temple, 0.4), ident.glasses_colour, rim)
        inner = ident.eye_spacing - ident.eye_rx * 1.35
        paint.line(place(np.array([(-inner, -0.02), (0, -0.028), (inner, -0.02)]), 1.0), ident.glasses_colour, rim)

    def _hand(self, paint: Painter, centre: np.ndarray, angle: float, open_hand: bool) -> None:
        skin, edge = self.skin, _shade(self.skin, 0.7)
        fingers = 4 if open_hand else 1
        # Drawn twice, a darker silhouette under the skin, so the hand reads against a face of the same skin.
        for colour, grow in ((edge, 0.005), (skin, 0.0)):
            paint.polygon(_rotate(ellipse(0, 0, 0.038 + grow, 0.045 + grow, 24), angle) + centre, colour)
            for i in range(fingers):
                offset = (i - (fingers - 1) / 2) * 0.019 if open_hand else 0.0
                base = _rotate(np.array([(offset, -0.03)]), angle)[0] + centre
                tip = _rotate(np.array([(offset * 1.2, -0.075 if open_hand else -0.055)]), angle)[0] + centre
                paint.line(np.array([base, tip]), colour, 0.016 + 2 * grow)
        paint.line(_rotate(np.array([(-0.025, 0.01), (0.025, 0.01)]), angle) + centre, self.skin_shade, 0.004)

    def _arms(self, paint: Painter, place, state) -> np.ndarray | None:
        ident = self.identity
        sleeve = _shade(ident.clothes, 0.92)
        raise_ = float(state["arm_raise"])
        chin = float(state["hand_chin"])
        if raise_ > 0.0:
            # The character's right arm (image left): from the shoulder up beside the head, waving.
            shoulder = np.array([0.5 - 0.3 * ident.shoulder_width, 0.86])
            rest_hand = np.array([0.14, 1.25])
            up_hand = np.array([0.16, 0.42])
            elbow = wave_elbow(raise_)
            swing = 0.45 * float(state["wave"])
            hand = rest_hand + (up_hand - rest_hand) * raise_
            hand = _rotate(hand[None], swing, tuple(elbow))[0]
            paint.line(np.array([shoulder, elbow, hand]), sleeve, 0.075)
            self._hand(paint, hand, swing, True)
            return hand
        if chin > 0.0:
            # The hand comes up from below and rests under the chin (which moves with the head).
            target = place([(0.02, ident.face_ry + 0.06)], 0.0)[0]
            rest = np.array([0.56, 1.3])
            hand = rest + (target - rest) * chin
            elbow = np.array([0.72, 1.12])
            paint.line(np.array([elbow, hand + (0.02, 0.05)]), sleeve, 0.07)
            self._hand(paint, hand, -0.2, False)
            return hand
        return None


@dataclass
class Clip:
    """A rendered clip: frames [T, H, W, 3] uint8, its audio and per-frame truth."""

    frames: np.ndarray
    truth: dict[str, np.ndarray]
    audio: np.ndarray
    identity: CharacterIdentity
    events: list[Event] = field(default_factory=list)
    seed: int = 0
    fps: int = 20
    sample_rate: int = MODEL_SAMPLE_RATE


TRUTH_DESCRIPTION = {
    "mouth_open": "mouth openness 0-1 (0 = closed lips)",
    "mouth_width": "mouth width 0-1 (0 = rounded 'oo', 1 = wide 'ee')",
    "emotion": f"index into {list(EMOTIONS)}",
    "emotion_intensity": "drawn intensity 0-1 of that emotion (fades on changes)",
    "action": f"index into {list(ACTIONS)}",
    "action_phase": "0-1 through the running action (0 when none)",
    "blink": "eyelid closure 0-1",
    "yaw": "head yaw, radians", "pitch": "head pitch, radians (+ down)", "roll": "head roll, radians",
    "offset": "head offset (x, y) in image fractions",
    "listening": "listening flag",
    "breath": "breathing 0-1 (shoulders up at 1)",
    "gaze": "iris offset (x, y), -1..1",
    "arm_raise": "wave arm raised 0-1", "hand_chin": "think hand at the chin 0-1", "wave": "wave swing -1..1",
    "mouth_box": "mouth region (x0, y0, x1, y1) in pixels", "eye_boxes": "eye regions [2, 4] in pixels",
    "brow_box": "brow region in pixels", "hand": "visible hand centre (x, y) in pixels, -1 when none",
}


def wave_elbow(arm_raise: float | np.ndarray) -> np.ndarray:
    """The waving arm's elbow, (x, y) in image fractions, as the arm is raised 0-1 (several raises: [N, 2])."""
    rest, up = np.array([0.25, 1.08]), np.array([0.2, 0.72])
    return rest + (up - rest) * np.asarray(arm_raise, np.float64)[..., None]


def render_clip(
    seed: int,
    audio: np.ndarray | None,
    events: Iterable[Event] = (),
    *,
    size: int = 128,
    fps: int = 20,
    sample_rate: int = MODEL_SAMPLE_RATE,
    seconds: float | None = None,
    identity: CharacterIdentity | None = None,
    idle_motion: bool = True,
) -> Clip:
    """Render ``identity`` (default: the character of ``seed``) saying ``audio`` (16 kHz float PCM) while
    following ``events``. The clip lasts as long as the audio, or ``seconds`` (audio is padded or cut).
    Deterministic: the same arguments give the same frames and truth."""
    hop = sample_rate // fps
    audio = np.zeros(0, np.float32) if audio is None else np.asarray(audio, np.float32)
    if seconds is None:
        if not len(audio):
            raise ValueError("give audio or seconds")
        seconds = len(audio) / sample_rate
    n_frames = int(round(seconds * fps))
    audio = np.pad(audio[: n_frames * hop], (0, max(0, n_frames * hop - len(audio))))
    events = list(events)
    identity = identity or identity_from_seed(seed)
    plan = plan_performance(audio, events, n_frames, seed=seed, fps=fps, sample_rate=sample_rate,
                            idle_motion=idle_motion)
    painter = CharacterPainter(identity, size)
    frames = np.empty((n_frames, size, size, 3), np.uint8)
    mouth_boxes = np.zeros((n_frames, 4), np.int32)
    eye_boxes = np.zeros((n_frames, 2, 4), np.int32)
    brow_boxes = np.zeros((n_frames, 4), np.int32)
    hands = np.zeros((n_frames, 2), np.float32)
    for i in range(n_frames):
        frames[i], layout = painter.draw({k: v[i] for k, v in plan.items()})
        mouth_boxes[i], eye_boxes[i], brow_boxes[i] = layout.mouth_box, layout.eye_boxes, layout.brow_box
        hands[i] = layout.hand
    truth = dict(plan, mouth_box=mouth_boxes, eye_boxes=eye_boxes, brow_box=brow_boxes, hand=hands)
    return Clip(frames=frames, truth=truth, audio=audio, identity=identity, events=events, seed=seed, fps=fps,
                sample_rate=sample_rate)


def neutral_state(**overrides: Any) -> dict[str, Any]:
    """One frame's state with nothing going on (front-facing, mouth closed, eyes open); override any field."""
    state: dict[str, Any] = {
        "mouth_open": 0.0, "mouth_width": 0.5, "emotion": 0, "emotion_intensity": 1.0, "action": 0,
        "action_phase": 0.0, "blink": 0.0, "yaw": 0.0, "pitch": 0.0, "roll": 0.0, "offset": (0.0, 0.0),
        "listening": False, "breath": 0.0, "gaze": (0.0, 0.0), "arm_raise": 0.0, "hand_chin": 0.0, "wave": 0.0,
    }
    if "emotion" in overrides and isinstance(overrides["emotion"], str):
        overrides["emotion"] = EMOTIONS.index(overrides["emotion"])
    state.update(overrides)
    return state


def render_still(identity: CharacterIdentity, size: int = 256, **state: Any) -> np.ndarray:
    """One frame [H, W, 3] of ``identity`` in :func:`neutral_state` with ``state`` overrides."""
    frame, _ = CharacterPainter(identity, size).draw(neutral_state(**state))
    return frame
