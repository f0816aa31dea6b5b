"""Draw the default character's reference image (avatar_backend/assets/default_character.png).

The default character must exist on a fresh machine without downloads or licences, and the tiny model only
knows characters drawn by its training-data renderer, so the image is that renderer's neutral still of
``DEFAULT_IDENTITY`` (a short-haired villager in a teal tunic, as default_character.json describes): front
facing, eyes open, mouth closed, at 256x256. The drawing is deterministic, so rebuilding it gives the same
file. Run from the repository root:

    .venv/bin/python -m model.make_default_character [--out FILE] [--size N]

With ``--seed N`` it draws the procedural character of that seed instead (and prints its description, a
ready prompt), which ``avatar-backend character add NAME --image FILE --prompt TEXT`` can register.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image

if __package__ in (None, ""):
    # Run as a script (python model/make_default_character.py): make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.data.identity import (  # noqa: E402
    DEFAULT_IDENTITY, CharacterIdentity, describe_identity, identity_from_seed,
)
from model.data.prompts import ACTION_PROMPTS, BASE_PROMPT, EMOTION_PROMPTS  # noqa: E402
from model.data.render import CharacterPainter, neutral_state, render_still  # noqa: E402

SIZE = 256
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "avatar_backend" / "assets" / "default_character.png"


def make_image(size: int = SIZE, identity: CharacterIdentity = DEFAULT_IDENTITY) -> Image.Image:
    """A character's neutral still (the default character unless told), ``size`` x ``size``."""
    return Image.fromarray(render_still(identity, size), "RGB")


def mouth_region(identity: CharacterIdentity = DEFAULT_IDENTITY, size: int = SIZE) -> list[float]:
    """The neutral still's mouth box (x0, y0, x1, y1) as fractions of the image side: where `demo` and the
    end-to-end tests read the mouth opening on the frames the server sends."""
    _, layout = CharacterPainter(identity, size).draw(neutral_state())
    return [round(v / size, 4) for v in layout.mouth_box]


def character_spec(image_name: str) -> dict:
    """default_character.json: the tiny model's prompts (model/data/prompts.py) and the mouth region."""
    return {
        "character_id": "default",
        "image": image_name,
        "description": describe_identity(DEFAULT_IDENTITY),
        "base_prompt": BASE_PROMPT,
        "emotion_prompts": dict(EMOTION_PROMPTS),
        "action_prompts": dict(ACTION_PROMPTS),
        "mouth_region": mouth_region(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the PNG")
    parser.add_argument("--size", type=int, default=SIZE, help="image side in pixels (default 256)")
    parser.add_argument("--seed", type=int, help="draw the procedural character of this seed instead")
    args = parser.parse_args(argv)
    # Compared resolved: a relative path to the shipped file is the shipped file.
    shipped = args.out.resolve() == DEFAULT_OUT
    if shipped and args.seed is not None:
        parser.error("--seed needs --out (the default path is the shipped default character)")
    if shipped and args.size != SIZE:
        parser.error(f"the shipped default character is {SIZE}x{SIZE}: give --out for another size")
    identity = DEFAULT_IDENTITY if args.seed is None else identity_from_seed(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    make_image(args.size, identity).save(args.out, format="PNG", optimize=True)
    print(f"wrote {args.out}")
    if shipped:
        spec_path = DEFAULT_OUT.with_suffix(".json")
        spec_path.write_text(json.dumps(character_spec(DEFAULT_OUT.name), indent=2) + "\n")
        print(f"wrote {spec_path}")
    print(f"prompt: {describe_identity(identity)}")


if __name__ == "__main__":
    main()
