"""Who a procedural character is: every look choice (face, skin, hair, eyes, clothes, accessories, background)
drawn from one seed, so a character can be rebuilt from its seed alone and two seeds give two people."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

RGB = tuple[int, int, int]

FACE_SHAPES = ("oval", "round", "square", "heart", "long")
HAIR_STYLES = ("short", "long", "bob", "bun", "spiky", "curly", "side_part", "bald")
EYE_SHAPES = ("almond", "round", "narrow")
NOSE_STYLES = ("line", "button", "long")
CLOTHES_STYLES = ("tunic", "vneck", "collar", "hoodie", "jacket")
HATS = ("none", "beanie", "brim", "cap")
GLASSES = ("none", "round", "square")
EARRINGS = ("none", "stud", "hoop")
BACKGROUNDS = ("radial", "vertical", "wall", "bokeh")

# Light to deep; jittered per character. Kept away from near-black so the dark mouth interior always
# stands out against the skin (the mouth measure relies on that contrast).
SKIN_TONES: tuple[RGB, ...] = (
    (247, 214, 190), (238, 196, 166), (233, 190, 160), (224, 172, 132), (198, 142, 104),
    (170, 116, 82), (141, 93, 64), (112, 72, 50), (96, 62, 44),
)
HAIR_COLOURS: tuple[RGB, ...] = (
    (30, 24, 22), (58, 40, 30), (74, 48, 36), (112, 72, 40), (150, 96, 50), (196, 150, 84),
    (226, 196, 130), (170, 60, 34), (140, 140, 146), (232, 228, 220), (60, 80, 150), (150, 60, 120),
)
IRIS_COLOURS: tuple[RGB, ...] = (
    (70, 110, 150), (60, 40, 30), (90, 60, 36), (70, 120, 70), (110, 130, 140), (40, 30, 24), (120, 90, 50),
)


@dataclass(frozen=True)
class CharacterIdentity:
    """The look of one character. Lengths are fractions of the image side, so any output size draws alike."""

    seed: int
    skin: RGB
    face_shape: str
    face_rx: float
    face_ry: float
    head_scale: float
    hair_style: str
    hair: RGB
    eye_shape: str
    eye_rx: float
    eye_ry: float
    eye_tilt: float
    eye_spacing: float
    iris: RGB
    brow_thickness: float
    nose: str
    lip: RGB
    mouth_half_width: float
    lip_thickness: float
    clothes_style: str
    clothes: RGB
    clothes_trim: RGB
    shoulder_width: float
    hat: str
    hat_colour: RGB
    glasses: str
    glasses_colour: RGB
    earrings: str
    earring_colour: RGB
    blush: bool
    background: str
    background_colours: tuple[RGB, RGB, RGB]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CharacterIdentity":
        def tuplify(value: Any) -> Any:
            return tuple(tuplify(v) for v in value) if isinstance(value, list) else value

        return cls(**{k: tuplify(v) for k, v in data.items()})


def _jitter(rng: np.random.Generator, colour: RGB, amount: float) -> RGB:
    return tuple(int(np.clip(c + rng.normal(0.0, amount), 0, 255)) for c in colour)  # type: ignore[return-value]


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))  # type: ignore[return-value]


def _random_colour(rng: np.random.Generator, low: int = 30, high: int = 230) -> RGB:
    return tuple(int(v) for v in rng.integers(low, high, 3))  # type: ignore[return-value]


def lip_colour_for(skin: RGB) -> RGB:
    """Lips are the skin pulled towards red, a little darker: readable on every tone, never near-black."""
    return _mix(skin, (180, 70, 80), 0.45) if sum(skin) > 330 else _mix(skin, (150, 60, 70), 0.35)


def identity_from_seed(seed: int) -> CharacterIdentity:
    """A random character, the same one for the same seed."""
    rng = np.random.default_rng([int(seed), 0x1D])
    skin = _jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))], 6.0)
    face_shape = FACE_SHAPES[rng.integers(len(FACE_SHAPES))]
    face_rx, face_ry = {
        "oval": (0.200, 0.242), "round": (0.212, 0.228), "square": (0.205, 0.236),
        "heart": (0.205, 0.240), "long": (0.188, 0.256),
    }[face_shape]
    eye_shape = EYE_SHAPES[rng.integers(len(EYE_SHAPES))]
    eye_rx, eye_ry = {"almond": (0.046, 0.026), "round": (0.040, 0.032), "narrow": (0.048, 0.020)}[eye_shape]
    hair = _jitter(rng, HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], 8.0)
    clothes = _random_colour(rng, 25, 225)
    background_base = _random_colour(rng, 60, 220)
    return CharacterIdentity(
        seed=int(seed),
        skin=skin,
        face_shape=face_shape,
        face_rx=face_rx * rng.uniform(0.95, 1.05),
        face_ry=face_ry * rng.uniform(0.96, 1.04),
        head_scale=float(rng.uniform(0.92, 1.04)),
        hair_style=HAIR_STYLES[rng.integers(len(HAIR_STYLES))],
        hair=hair,
        eye_shape=eye_shape,
        eye_rx=eye_rx * rng.uniform(0.92, 1.08),
        eye_ry=eye_ry * rng.uniform(0.9, 1.1),
        eye_tilt=float(rng.uniform(-0.12, 0.15)),
        eye_spacing=float(rng.uniform(0.080, 0.092)),
        iris=_jitter(rng, IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))], 10.0),
        brow_thickness=float(rng.uniform(0.008, 0.015)),
        nose=NOSE_STYLES[rng.integers(len(NOSE_STYLES))],
        lip=_jitter(rng, lip_colour_for(skin), 5.0),
        mouth_half_width=float(rng.uniform(0.050, 0.064)),
        lip_thickness=float(rng.uniform(0.008, 0.014)),
        clothes_style=CLOTHES_STYLES[rng.integers(len(CLOTHES_STYLES))],
        clothes=clothes,
        clothes_trim=_random_colour(rng, 40, 240),
        shoulder_width=float(rng.uniform(0.9, 1.08)),
        hat=HATS[rng.choice(len(HATS), p=(0.7, 0.1, 0.1, 0.1))],
        hat_colour=_random_colour(rng),
        glasses=GLASSES[rng.choice(len(GLASSES), p=(0.7, 0.15, 0.15))],
        glasses_colour=_random_colour(rng, 10, 140),
        earrings=EARRINGS[rng.choice(len(EARRINGS), p=(0.65, 0.2, 0.15))],
        earring_colour=_jitter(rng, (222, 190, 90), 30.0),
        blush=bool(rng.random() < 0.5),
        background=BACKGROUNDS[rng.integers(len(BACKGROUNDS))],
        background_colours=(
            background_base,
            _jitter(rng, _mix(background_base, (255, 255, 255), 0.4), 20.0),
            _jitter(rng, _mix(background_base, (0, 0, 0), 0.45), 20.0),
        ),
    )


# The shipped default character: the short-haired villager in a teal tunic that default_character.json
# describes, in the renderer's style.
DEFAULT_IDENTITY = CharacterIdentity(
    seed=0,
    skin=(233, 190, 160),
    face_shape="oval",
    face_rx=0.203,
    face_ry=0.242,
    head_scale=1.0,
    hair_style="short",
    hair=(74, 48, 36),
    eye_shape="almond",
    eye_rx=0.047,
    eye_ry=0.027,
    eye_tilt=0.0,
    eye_spacing=0.086,
    iris=(70, 110, 150),
    brow_thickness=0.012,
    nose="line",
    lip=(178, 94, 92),
    mouth_half_width=0.058,
    lip_thickness=0.011,
    clothes_style="tunic",
    clothes=(58, 96, 120),
    clothes_trim=(196, 162, 88),
    shoulder_width=1.0,
    hat="none",
    hat_colour=(0, 0, 0),
    glasses="none",
    glasses_colour=(0, 0, 0),
    earrings="none",
    earring_colour=(0, 0, 0),
    blush=True,
    background="radial",
    background_colours=((160, 148, 138), (214, 200, 178), (92, 84, 96)),
)


_COLOUR_NAMES: dict[str, RGB] = {
    "black": (25, 25, 25), "dark brown": (70, 45, 32), "brown": (120, 78, 45), "auburn": (160, 70, 40),
    "blond": (215, 180, 110), "grey": (140, 140, 146), "white": (235, 232, 225), "red": (200, 50, 50),
    "orange": (225, 130, 40), "yellow": (225, 210, 60), "green": (70, 160, 70), "teal": (50, 140, 140),
    "blue": (60, 90, 190), "navy": (35, 45, 100), "purple": (120, 60, 160), "pink": (225, 120, 170),
    "olive": (120, 120, 50), "beige": (210, 190, 150),
}


def colour_name(colour: RGB) -> str:
    """The nearest everyday colour word."""
    rgb = np.array(colour, np.float32)
    return min(_COLOUR_NAMES, key=lambda n: float(np.sum((np.array(_COLOUR_NAMES[n], np.float32) - rgb) ** 2)))


def describe_identity(identity: CharacterIdentity) -> str:
    """A one-line prompt for the character, in the words of default_character.json's base prompt."""
    hair = {"short": "short {} hair", "long": "long {} hair", "bob": "{} hair in a bob", "bun": "{} hair in a bun",
            "spiky": "spiky {} hair", "curly": "curly {} hair", "side_part": "side-parted {} hair",
            "bald": ""}[identity.hair_style].format(colour_name(identity.hair))
    clothes = {"tunic": "tunic", "vneck": "v-neck top", "collar": "collared shirt", "hoodie": "hoodie",
               "jacket": "jacket"}[identity.clothes_style]

    def a(noun: str) -> str:
        return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"

    worn = [a(f"{colour_name(identity.clothes)} {clothes}")]
    if identity.glasses != "none":
        worn.append(f"{identity.glasses} glasses")
    if identity.hat != "none":
        worn.append(a(f"{colour_name(identity.hat_colour)} {'hat' if identity.hat == 'brim' else identity.hat}"))
    if identity.earrings != "none":
        worn.append("earrings")
    wearing = worn[0] if len(worn) == 1 else f"{', '.join(worn[:-1])} and {worn[-1]}"
    subject = "a bald cartoon character" if identity.hair_style == "bald" else f"a cartoon character with {hair}"
    return f"{subject}, wearing {wearing}, talking to the viewer, head and shoulders"
