"""The SoundFonts the catalogue renders with, and the keys every one of them sounds for each
GM program: a part whose notes fell where its instrument is silent would carry a family tag
it never plays.
"""

from __future__ import annotations

# The SoundFonts whose keys the table below was probed in (Debian packages fluid-soundfont-gm,
# timgm6mb-soundfont, musescore-general-soundfont-small, opl3-soundfont): three sets of samples
# (MuseScore_General reuses most of FluidR3_GM's) and one FM synthesizer. Not sf_GMbank.sf2
# (csound-soundfont): it shares TimGM6mb's samples, so it cannot stand in for a held-out one.
DEFAULT_SOUNDFONTS = tuple(
    f"/usr/share/sounds/{name}"
    for name in (
        "sf2/FluidR3_GM.sf2",
        "sf2/TimGM6mb.sf2",
        "sf3/MuseScore_General_Lite.sf3",
        "sf2/OPL-3_FM_128M.sf2",
    )
)
# The keys that every default soundfont sounds clearly for a program: FluidR3_GM and TimGM6mb
# probed with 1 s notes at velocities 30 and 127 (FluidR3_GM's contrabass, for one, is silent
# above 57), then narrowed by tools/probe_soundfonts.py for MuseScore_General and OPL-3.
# Unlisted programs sound from 21 to 108. Parts are folded by octaves into their program's keys.
_PROGRAMS_BY_HIGHEST_KEY = {
    57: (43,),
    70: (47,),
    72: (58, 67),
    77: (89,),
    78: (11, 78),
    81: (46,),
    82: (39,),
    84: (28, 33, 34, 35, 36, 37, 65, 70),
    85: (31, 69),
    86: (23,),
    88: (95,),
    90: (26, 71, 92),
    92: (24,),
    93: (4, 40, 85),
    94: (0, 1, 3, 5, 15),
    95: (13,),
    96: (19, 22, 41, 44, 45, 48, 57, 59, 60, 61, 64, 68, 82),
    97: (49, 74),
    99: (32, 66),
    100: (88,),
    105: (25,),
    106: (6, 87, 91),
}
HIGHEST_KEY = {prog: key for key, progs in _PROGRAMS_BY_HIGHEST_KEY.items() for prog in progs}
LOWEST_KEY = {68: 36}  # the oboe


def key_range(program: int) -> tuple[int, int]:
    """The lowest and highest key a GM program sounds in every installed soundfont."""
    return LOWEST_KEY.get(program, 21), HIGHEST_KEY.get(program, 108)
