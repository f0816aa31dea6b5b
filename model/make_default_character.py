"""Draw the default character's reference image (avatar_backend/assets/default_character.png).

The default character must exist on a fresh machine without downloads or licences, so it is drawn here from
shapes: a stylised bust (head, hair, eyes, brows, nose, mouth, neck, shoulders in a tunic) on a soft radial
background, framed like a talking-head video. The drawing is deterministic, so rebuilding it gives the same
file. Run from the repository root:

    .venv/bin/python model/make_default_character.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 256
# Drawn at 4x and scaled down so the edges are anti-aliased.
SCALE = 4
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "avatar_backend" / "assets" / "default_character.png"

SKIN = (233, 190, 160)
SKIN_SHADE = (208, 160, 132)
HAIR = (74, 48, 36)
HAIR_LIGHT = (104, 70, 52)
IRIS = (70, 110, 150)
LIP = (178, 94, 92)
TUNIC = (58, 96, 120)
TUNIC_TRIM = (196, 162, 88)


def background() -> Image.Image:
    """A warm radial gradient, lighter behind the head, like a softly lit room."""
    n = SIZE * SCALE
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) / n
    distance = np.sqrt((x - 0.5) ** 2 + (y - 0.38) ** 2)
    t = np.clip(distance / 0.75, 0.0, 1.0)[..., None]
    inner = np.array([214, 200, 178], np.float32)
    outer = np.array([92, 84, 96], np.float32)
    rgb = inner * (1 - t) + outer * t
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def box(cx: float, cy: float, rx: float, ry: float) -> tuple[int, int, int, int]:
    """An ellipse's bounding box from its centre and radii, in 256-pixel units, at drawing scale."""
    s = SCALE
    return (int((cx - rx) * s), int((cy - ry) * s), int((cx + rx) * s), int((cy + ry) * s))


def points(*xy: tuple[float, float]) -> list[tuple[int, int]]:
    return [(int(x * SCALE), int(y * SCALE)) for x, y in xy]


def draw_character(image: Image.Image) -> None:
    d = ImageDraw.Draw(image)
    s = SCALE

    # Shoulders and tunic: a wide rounded shape leaving the frame at the bottom.
    d.ellipse(box(128, 262, 118, 62), fill=TUNIC)
    d.polygon(points((104, 200), (128, 236), (152, 200)), fill=TUNIC_TRIM)
    d.polygon(points((110, 200), (128, 226), (146, 200)), fill=SKIN_SHADE)

    # Neck, shaded where the jaw throws its shadow.
    d.rectangle(box(128, 186, 17, 22), fill=SKIN)
    d.ellipse(box(128, 170, 19, 10), fill=SKIN_SHADE)

    # Hair behind the head.
    d.ellipse(box(128, 104, 62, 70), fill=HAIR)

    # Ears, then the face.
    d.ellipse(box(75, 118, 9, 15), fill=SKIN_SHADE)
    d.ellipse(box(181, 118, 9, 15), fill=SKIN_SHADE)
    d.ellipse(box(128, 116, 52, 62), fill=SKIN)

    # Fringe: overlapping locks across the forehead.
    for cx, cy, rx, ry in ((98, 66, 34, 22), (130, 58, 38, 22), (162, 68, 30, 22)):
        d.ellipse(box(cx, cy, rx, ry), fill=HAIR)
    d.arc(box(122, 60, 30, 16), 200, 320, fill=HAIR_LIGHT, width=2 * s)

    # Eyes: white, iris, pupil, a highlight; lids as arcs.
    for cx in (106, 150):
        d.ellipse(box(cx, 114, 12, 7), fill=(250, 248, 244))
        d.ellipse(box(cx, 114, 6, 6), fill=IRIS)
        d.ellipse(box(cx, 114, 3, 3), fill=(20, 20, 28))
        d.ellipse(box(cx + 2, 112, 1.5, 1.5), fill=(255, 255, 255))
        d.arc(box(cx, 114, 13, 8), 190, 350, fill=(60, 40, 34), width=2 * s)
    # Brows.
    d.line(points((92, 99), (106, 95), (119, 98)), fill=HAIR, width=3 * s, joint="curve")
    d.line(points((137, 98), (150, 95), (164, 99)), fill=HAIR, width=3 * s, joint="curve")

    # Nose: a soft shadow line and nostrils.
    d.line(points((128, 118), (124, 138), (130, 141)), fill=SKIN_SHADE, width=2 * s, joint="curve")

    # Mouth: closed, a slight smile; lower lip as a fuller shape.
    d.chord(box(128, 154, 15, 6), 0, 180, fill=LIP)
    d.arc(box(128, 150, 16, 6), 20, 160, fill=(120, 60, 58), width=2 * s)

    # Cheeks.
    for cx in (96, 160):
        d.ellipse(box(cx, 140, 10, 6), fill=(236, 170, 150))


def make_image() -> Image.Image:
    image = background()
    draw_character(image)
    image = image.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    # A touch of blur so the image reads as a soft photo rather than vector art.
    return image.filter(ImageFilter.GaussianBlur(0.4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the PNG")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    make_image().save(args.out, format="PNG", optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
