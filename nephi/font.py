"""A 5x7 bitmap font for labelling quick-look pictures (upper-case letters, digits, punctuation).

Lower-case letters are drawn as upper case; characters without a glyph are drawn as '?'.
Each glyph is 7 rows of 5 columns ('#' = ink). :func:`draw_text` paints a string into an
(H, W, 3) uint8 picture, scaled by an integer factor, with a 1-column gap between glyphs.
"""

from __future__ import annotations

import numpy as np

GLYPH_W, GLYPH_H = 5, 7

_GLYPHS = {
    " ": ["     "] * 7,
    "A": [" ### ", "#   #", "#   #", "#####", "#   #", "#   #", "#   #"],
    "B": ["#### ", "#   #", "#   #", "#### ", "#   #", "#   #", "#### "],
    "C": [" ### ", "#   #", "#    ", "#    ", "#    ", "#   #", " ### "],
    "D": ["#### ", "#   #", "#   #", "#   #", "#   #", "#   #", "#### "],
    "E": ["#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#####"],
    "F": ["#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#    "],
    "G": [" ### ", "#   #", "#    ", "# ###", "#   #", "#   #", " ####"],
    "H": ["#   #", "#   #", "#   #", "#####", "#   #", "#   #", "#   #"],
    "I": [" ### ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "],
    "J": ["  ###", "   # ", "   # ", "   # ", "   # ", "#  # ", " ##  "],
    "K": ["#   #", "#  # ", "# #  ", "##   ", "# #  ", "#  # ", "#   #"],
    "L": ["#    ", "#    ", "#    ", "#    ", "#    ", "#    ", "#####"],
    "M": ["#   #", "## ##", "# # #", "# # #", "#   #", "#   #", "#   #"],
    "N": ["#   #", "#   #", "##  #", "# # #", "#  ##", "#   #", "#   #"],
    "O": [" ### ", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "],
    "P": ["#### ", "#   #", "#   #", "#### ", "#    ", "#    ", "#    "],
    "Q": [" ### ", "#   #", "#   #", "#   #", "# # #", "#  # ", " ## #"],
    "R": ["#### ", "#   #", "#   #", "#### ", "# #  ", "#  # ", "#   #"],
    "S": [" ####", "#    ", "#    ", " ### ", "    #", "    #", "#### "],
    "T": ["#####", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  "],
    "U": ["#   #", "#   #", "#   #", "#   #", "#   #", "#   #", " ### "],
    "V": ["#   #", "#   #", "#   #", "#   #", "#   #", " # # ", "  #  "],
    "W": ["#   #", "#   #", "#   #", "# # #", "# # #", "# # #", " # # "],
    "X": ["#   #", "#   #", " # # ", "  #  ", " # # ", "#   #", "#   #"],
    "Y": ["#   #", "#   #", " # # ", "  #  ", "  #  ", "  #  ", "  #  "],
    "Z": ["#####", "    #", "   # ", "  #  ", " #   ", "#    ", "#####"],
    "0": [" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### "],
    "1": ["  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "],
    "2": [" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####"],
    "3": ["#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### "],
    "4": ["   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # "],
    "5": ["#####", "#    ", "#### ", "    #", "    #", "#   #", " ### "],
    "6": ["  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### "],
    "7": ["#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   "],
    "8": [" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### "],
    "9": [" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  "],
    ".": ["     ", "     ", "     ", "     ", "     ", " ##  ", " ##  "],
    ",": ["     ", "     ", "     ", "     ", " ##  ", "  #  ", " #   "],
    ":": ["     ", " ##  ", " ##  ", "     ", " ##  ", " ##  ", "     "],
    ";": ["     ", " ##  ", " ##  ", "     ", " ##  ", "  #  ", " #   "],
    "-": ["     ", "     ", "     ", "#####", "     ", "     ", "     "],
    "+": ["     ", "  #  ", "  #  ", "#####", "  #  ", "  #  ", "     "],
    "=": ["     ", "     ", "#####", "     ", "#####", "     ", "     "],
    "<": ["   # ", "  #  ", " #   ", "#    ", " #   ", "  #  ", "   # "],
    ">": [" #   ", "  #  ", "   # ", "    #", "   # ", "  #  ", " #   "],
    "/": ["     ", "    #", "   # ", "  #  ", " #   ", "#    ", "     "],
    "(": ["   # ", "  #  ", " #   ", " #   ", " #   ", "  #  ", "   # "],
    ")": [" #   ", "  #  ", "   # ", "   # ", "   # ", "  #  ", " #   "],
    "[": [" ### ", " #   ", " #   ", " #   ", " #   ", " #   ", " ### "],
    "]": [" ### ", "   # ", "   # ", "   # ", "   # ", "   # ", " ### "],
    "%": ["##   ", "##  #", "   # ", "  #  ", " #   ", "#  ##", "   ##"],
    "_": ["     ", "     ", "     ", "     ", "     ", "     ", "#####"],
    "|": ["  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  "],
    "'": ["  #  ", "  #  ", " #   ", "     ", "     ", "     ", "     "],
    "*": ["     ", "  #  ", "# # #", " ### ", "# # #", "  #  ", "     "],
    "#": [" # # ", " # # ", "#####", " # # ", "#####", " # # ", " # # "],
    "?": [" ### ", "#   #", "    #", "   # ", "  #  ", "     ", "  #  "],
    "!": ["  #  ", "  #  ", "  #  ", "  #  ", "  #  ", "     ", "  #  "],
    "^": ["  #  ", " # # ", "#   #", "     ", "     ", "     ", "     "],
}

_BITMAPS = {ch: np.array([[c == "#" for c in row] for row in rows], dtype=bool)
            for ch, rows in _GLYPHS.items()}


def glyph(ch: str) -> np.ndarray:
    """The (7, 5) bool bitmap of one character (upper-cased; '?' when there is no glyph)."""
    return _BITMAPS.get(ch.upper(), _BITMAPS["?"])


def text_size(text: str, scale: int = 1) -> tuple:
    """(height, width) in pixels of ``text`` drawn at ``scale``."""
    n = len(text)
    return GLYPH_H * scale, max(0, n * (GLYPH_W + 1) - 1) * scale


def draw_text(picture: np.ndarray, text: str, row: int, col: int, colour=(255, 255, 255),
              scale: int = 1, background=None) -> None:
    """Paint ``text`` into ``picture`` (H, W, 3) uint8 in place, top-left corner at (row, col).

    ``background``: optional RGB filled behind the text (a 1-pixel margin included) so labels
    stay readable over images. Whatever falls outside the picture is clipped.
    """
    h, w = text_size(text, scale)
    if background is not None:
        _fill(picture, row - scale, col - scale, h + 2 * scale, w + 2 * scale, background)
    for k, ch in enumerate(text):
        bitmap = np.kron(glyph(ch), np.ones((scale, scale), dtype=bool))
        top, left = row, col + k * (GLYPH_W + 1) * scale
        r0, c0 = max(top, 0), max(left, 0)
        r1 = min(top + bitmap.shape[0], picture.shape[0])
        c1 = min(left + bitmap.shape[1], picture.shape[1])
        if r1 <= r0 or c1 <= c0:
            continue
        ink = bitmap[r0 - top:r1 - top, c0 - left:c1 - left]
        picture[r0:r1, c0:c1][ink] = colour


def _fill(picture: np.ndarray, row: int, col: int, h: int, w: int, colour) -> None:
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + h, picture.shape[0]), min(col + w, picture.shape[1])
    if r1 > r0 and c1 > c0:
        picture[r0:r1, c0:c1] = colour
