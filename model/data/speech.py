"""Speech to drive the characters: random utterances from espeak-ng across languages, voices, speeds and
pitches, with pauses between phrases. Each utterance says which language and voice made it, so an evaluation
can hold out a language or a speaker. espeak-ng is a system tool (``apt install espeak-ng``); callers check
:func:`espeak_available` first.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from avatar_backend.media.resample import MODEL_SAMPLE_RATE, resample

SAMPLE_RATE = MODEL_SAMPLE_RATE
ESPEAK_RATE = 22050

# espeak-ng voice per language, and a few short phrases in it (everyday game-NPC lines).
PHRASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "en": ("en-us", (
        "Hello there, traveller.", "The market opens at dawn.", "Have you seen my cat?",
        "I would not go into the woods at night.", "Thank you, that is very kind.", "Who goes there?",
        "The blacksmith needs more iron.", "What a beautiful morning!", "You look tired, sit down.",
        "Follow the river to the old mill.", "No, absolutely not.", "Oh, I didn't expect you so soon.")),
    "fr": ("fr-fr", (
        "Bonjour, voyageur.", "Le marché ouvre à l'aube.", "Avez-vous vu mon chat ?",
        "Merci beaucoup, c'est très gentil.", "Qui va là ?", "Quelle belle matinée !",
        "Suivez la rivière jusqu'au vieux moulin.", "Non, pas question.")),
    "de": ("de", (
        "Hallo, Reisender.", "Der Markt öffnet im Morgengrauen.", "Hast du meine Katze gesehen?",
        "Vielen Dank, das ist sehr nett.", "Wer ist da?", "Was für ein schöner Morgen!",
        "Folge dem Fluss bis zur alten Mühle.", "Nein, auf keinen Fall.")),
    "es": ("es", (
        "Hola, viajero.", "El mercado abre al amanecer.", "¿Has visto a mi gato?",
        "Muchas gracias, eres muy amable.", "¿Quién anda ahí?", "¡Qué mañana tan bonita!",
        "Sigue el río hasta el viejo molino.", "No, de ninguna manera.")),
    "it": ("it", (
        "Ciao, viaggiatore.", "Il mercato apre all'alba.", "Hai visto il mio gatto?",
        "Grazie mille, sei molto gentile.", "Chi va là?", "Che bella mattina!",
        "Segui il fiume fino al vecchio mulino.", "No, assolutamente no.")),
    "pt": ("pt-br", (
        "Olá, viajante.", "O mercado abre ao amanhecer.", "Você viu o meu gato?",
        "Muito obrigado, é muito gentil.", "Quem está aí?", "Que manhã bonita!",
        "Siga o rio até o velho moinho.", "Não, de jeito nenhum.")),
    "nl": ("nl", (
        "Hallo, reiziger.", "De markt gaat open bij zonsopgang.", "Heb je mijn kat gezien?",
        "Dank je wel, dat is erg aardig.", "Wie is daar?", "Wat een mooie ochtend!")),
    "pl": ("pl", (
        "Witaj, podróżniku.", "Targ otwiera się o świcie.", "Czy widziałeś mojego kota?",
        "Dziękuję bardzo, to bardzo miłe.", "Kto tam?", "Jaki piękny poranek!")),
}
# espeak-ng voice variants: different speakers for the same language.
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def synthesize(text: str, voice: str = "en-us", *, speed: int = 160, pitch: int = 50) -> np.ndarray:
    """``text`` spoken by espeak-ng (``-v voice -s speed -p pitch``) as 16 kHz float32 PCM."""
    if not espeak_available():
        raise RuntimeError("espeak-ng is not installed (apt install espeak-ng)")
    result = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(int(speed)), "-p", str(int(pitch)), "--stdout", text],
        capture_output=True, check=True, timeout=30,
    )
    wav = result.stdout
    # Written to a pipe, the WAV header's sizes are placeholders; the samples follow the "data" chunk header.
    start = wav.find(b"data")
    if start < 0:
        raise RuntimeError(f"espeak-ng gave no audio for {text!r} with voice {voice!r}")
    samples = np.frombuffer(wav[start + 8:][: (len(wav) - start - 8) // 2 * 2], np.int16)
    return resample(samples, ESPEAK_RATE, SAMPLE_RATE)


@dataclass
class Utterance:
    """Speech made by :func:`random_utterance`, with who made it and where its phrases are."""

    audio: np.ndarray                  # float32 at ``sample_rate``
    sample_rate: int
    language: str
    voice: str                         # the full espeak-ng voice, e.g. "fr-fr+f3"
    speaker: str                       # the variant, e.g. "f3": a speaker id across languages
    speed: int
    pitch: int
    phrases: list[str] = field(default_factory=list)
    spans: list[tuple[float, float]] = field(default_factory=list)  # (start, end) seconds of each phrase

    def metadata(self) -> dict[str, Any]:
        out = asdict(self)
        del out["audio"]
        return out


def random_utterance(
    rng: np.random.Generator,
    seconds: float,
    *,
    languages: tuple[str, ...] | None = None,
    speakers: tuple[str, ...] | None = None,
    pause_range: tuple[float, float] = (0.25, 1.6),
) -> Utterance:
    """``seconds`` of speech: random phrases of one language by one voice, separated by silent pauses, with
    leading silence; padded with silence or cut to exactly ``seconds``."""
    language = str(rng.choice(sorted(languages or PHRASES)))
    base_voice, phrases = PHRASES[language]
    speaker = str(rng.choice(speakers or VARIANTS))
    voice = f"{base_voice}+{speaker}"
    speed = int(rng.integers(120, 221))
    pitch = int(rng.integers(20, 81))
    total = int(round(seconds * SAMPLE_RATE))
    pieces: list[np.ndarray] = []
    said: list[str] = []
    spans: list[tuple[float, float]] = []
    position = int(rng.uniform(0.0, 0.8) * SAMPLE_RATE)
    pieces.append(np.zeros(position, np.float32))
    while position < total:
        text = str(rng.choice(phrases))
        speech = synthesize(text, voice, speed=speed, pitch=pitch)
        speech = speech * np.float32(rng.uniform(0.5, 1.0) / max(float(np.abs(speech).max()), 1e-6))
        said.append(text)
        spans.append((position / SAMPLE_RATE, min(position + len(speech), total) / SAMPLE_RATE))
        pause = np.zeros(int(rng.uniform(*pause_range) * SAMPLE_RATE), np.float32)
        pieces += [speech, pause]
        position += len(speech) + len(pause)
    audio = np.concatenate(pieces)[:total]
    audio = np.pad(audio, (0, total - len(audio)))
    return Utterance(audio=audio.astype(np.float32), sample_rate=SAMPLE_RATE, language=language, voice=voice,
                     speaker=speaker, speed=speed, pitch=pitch, phrases=said, spans=spans)
