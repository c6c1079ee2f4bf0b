"""The labelled demo catalogue: MIDI arrangements rendered by FluidSynth.

Every tag is decided before a note is written, so labels are exact by construction, and
``check`` re-derives every tag from the saved MIDI files alone. One module per step, each
importing only those above it:

    labels        the vocabulary, what each tag means, the tags read back off a MIDI file
    soundfonts    the SoundFonts rendered with and the keys each GM program sounds in them
    arrangement   compose a track's parts to fit its tags; write them as a MIDI file
    render        one track: MIDI -> FluidSynth -> ffmpeg, and its manifest row
    build         the whole catalogue on storage: ``synthesize`` and ``check``
"""

from __future__ import annotations

from raytag.catalogue.arrangement import TPB, compose, to_midi
from raytag.catalogue.build import check, synthesize
from raytag.catalogue.labels import (
    DRUM_CHANNEL,
    EXCLUSIVE,
    FAMILIES,
    VOCABULARY,
    derive_tags,
    family_of,
)
from raytag.catalogue.render import render_midi
from raytag.catalogue.soundfonts import DEFAULT_SOUNDFONTS, key_range

__all__ = [
    "DEFAULT_SOUNDFONTS",
    "DRUM_CHANNEL",
    "EXCLUSIVE",
    "FAMILIES",
    "TPB",
    "VOCABULARY",
    "check",
    "compose",
    "derive_tags",
    "family_of",
    "key_range",
    "render_midi",
    "synthesize",
    "to_midi",
]
