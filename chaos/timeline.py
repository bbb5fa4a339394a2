"""A timeline picture of a campaign (PNG), drawn with the standard library only.

Lanes, top to bottom: one per member showing its faults (red = killed,
orange = paused, blue = restarting, dark grey = cut off by a partition,
magenta = one-way drop, cyan = delayed links, brown = lossy links, purple
tick = leader transfer) and, as a thin strip under it, when it was the
leader (green); then operation latency
(x = invocation time, y = latency on a log scale from 1 ms to 10 s; green =
ok, grey = failed read, red = ambiguous, drawn at the top). Time ticks every
10 s (every 60 s for long runs).
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chaos.campaign import CampaignResult

RGB = tuple[int, int, int]

WHITE: RGB = (255, 255, 255)
BLACK: RGB = (0, 0, 0)
GREY: RGB = (170, 170, 170)
LIGHT: RGB = (235, 235, 235)
RED: RGB = (220, 40, 40)
ORANGE: RGB = (245, 150, 30)
BLUE: RGB = (60, 110, 230)
PURPLE: RGB = (150, 60, 200)
GREEN: RGB = (40, 170, 70)

DARK: RGB = (60, 60, 60)
MAGENTA: RGB = (230, 60, 170)
CYAN: RGB = (40, 190, 200)
BROWN: RGB = (140, 90, 40)

FAULT_COLOURS = {
    "kill": RED,
    "kill_majority": RED,
    "pause": ORANGE,
    "restart": BLUE,
    "partition": DARK,
    "oneway": MAGENTA,
    "delay": CYAN,
    "loss": BROWN,
    "power_loss": BLACK,
    "disk_full": BROWN,
    "slow_disk": CYAN,
    "failpoint": MAGENTA,
}
LEGEND = [
    ("KILL", RED),
    ("PAUSE", ORANGE),
    ("RESTART", BLUE),
    ("CUT", DARK),
    ("ONEWAY", MAGENTA),
    ("DELAY", CYAN),
    ("LOSS", BROWN),
    ("MOVE", PURPLE),
    ("LEADER", GREEN),
]

# A 3x5 font: each glyph is five rows of three bits.
_FONT = {
    "0": "111101101101111",
    "1": "010110010010111",
    "2": "111001111100111",
    "3": "111001111001111",
    "4": "101101111001001",
    "5": "111100111001111",
    "6": "111100111101111",
    "7": "111001001001001",
    "8": "111101111101111",
    "9": "111101111001111",
    "M": "101111111101101",
    "S": "011100010001110",
    "L": "100100100100111",
    "A": "010101111101101",
    "T": "111010010010010",
    "E": "111100111100111",
    "N": "101111111111101",
    "C": "111100100100111",
    "Y": "101101010010010",
    "O": "111101101101111",
    "P": "111101111100100",
    "K": "101110100110101",
    "W": "101101101111101",
    "V": "101101101101010",
    "I": "111010010010111",
    "R": "110101110101101",
    "U": "101101101101111",
    "D": "110101101101110",
    "G": "111100101101111",
    " ": "000000000000000",
    ".": "000000000000010",
    "-": "000000111000000",
}


class Canvas:
    """A tiny RGB raster with rectangles, text and PNG output."""

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self.rows = [bytearray(WHITE * width) for _ in range(height)]

    def rect(self, x0: int, y0: int, x1: int, y1: int, colour: RGB) -> None:
        x0, x1 = max(0, min(x0, x1)), min(self.width, max(x0, x1) + 1)
        y0, y1 = max(0, min(y0, y1)), min(self.height, max(y0, y1) + 1)
        if x0 >= x1:
            return
        chunk = bytes(colour) * (x1 - x0)
        for y in range(y0, y1):
            self.rows[y][3 * x0 : 3 * x1] = chunk

    def text(self, x: int, y: int, s: str, colour: RGB = BLACK, scale: int = 2) -> None:
        for ch in s.upper():
            glyph = _FONT.get(ch, _FONT[" "])
            for r in range(5):
                for c in range(3):
                    if glyph[3 * r + c] == "1":
                        px, py = x + c * scale, y + r * scale
                        self.rect(px, py, px + scale - 1, py + scale - 1, colour)
            x += 4 * scale

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(row) for row in self.rows)

        def chunk(tag: bytes, data: bytes) -> bytes:
            body = tag + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b"")
        )


def render_timeline(result: CampaignResult, path: Path, width: int = 1600) -> None:
    """Draw ``result``'s faults, leaders and operation latencies into a PNG at ``path``."""
    # One lane per slot: with membership changes a member may sit in the spare one.
    n = result.config.members + (1 if result.config.membership else 0)
    left, right = 110, 20
    lane_h, lat_h = 34, 220
    top = 10
    height = top + n * lane_h + 20 + lat_h + 64
    cv = Canvas(width, height)
    t0 = result.started
    t_end = max(result.duration, 1e-3)
    plot_w = width - left - right

    def x_of(t: float) -> int:
        return left + int(plot_w * min(max((t - t0) / t_end, 0.0), 1.0))

    for i in range(n):
        y = top + i * lane_h
        cv.rect(left, y, width - right, y + lane_h - 10, LIGHT)
        cv.text(8, y + 6, f"M{i}")
    for f in result.faults:
        for i in f.members:
            y = top + i * lane_h
            if f.kind in ("move_leader", "replace_member", "learner_cycle"):
                cv.rect(x_of(f.start), y, x_of(f.start) + 2, y + lane_h - 10, PURPLE)
            elif f.kind in FAULT_COLOURS:
                cv.rect(x_of(f.start), y, x_of(f.end), y + lane_h - 14, FAULT_COLOURS[f.kind])
    leaders = [*result.leaders, (t0 + t_end, None)]
    for (t, who), (t_next, _) in itertools.pairwise(leaders):
        if who is not None:
            y = top + who * lane_h + lane_h - 13
            cv.rect(x_of(t), y, x_of(t_next), y + 3, GREEN)

    ly = top + n * lane_h + 20
    cv.rect(left, ly, width - right, ly + lat_h, LIGHT)
    cv.text(8, ly + 4, "LATENCY")
    cv.text(8, ly + 20, "10S")
    cv.text(8, ly + lat_h - 10, "1MS")
    lo, hi = math.log10(1e-3), math.log10(10.0)
    for op in result.ops:
        if op.ret is None or op.status == "info":
            x = x_of(op.invoke)
            cv.rect(x, ly, x + 1, ly + 4, RED)
            continue
        lat = max(op.ret - op.invoke, 1e-3)
        frac = (math.log10(min(lat, 10.0)) - lo) / (hi - lo)
        y = ly + lat_h - int(frac * (lat_h - 2)) - 1
        x = x_of(op.invoke)
        cv.rect(x, y, x + 1, y + 1, GREEN if op.status == "ok" else GREY)

    step = 10 if t_end <= 300 else 60
    ty = ly + lat_h + 6
    for s in range(0, int(t_end) + 1, step):
        x = x_of(t0 + s)
        cv.rect(x, ty, x, ty + 4, BLACK)
        cv.text(x + 2, ty + 8, f"{s}S")
    x = left
    for label, colour in LEGEND:
        cv.rect(x, ty + 30, x + 12, ty + 40, colour)
        cv.text(x + 16, ty + 31, label)
        x += 24 + 8 * len(label)
    path.write_bytes(cv.png())
