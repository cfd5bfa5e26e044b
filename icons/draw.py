#!/usr/bin/env python3
"""Draws Porthole's icons (stdlib only): `python3 icons/draw.py` rewrites icons/**.png.

A porthole is a ring; what is inside says the state, so the icon reads without colour too
(and the macOS template variants are the same shapes in black).
"""
import math, os, struct, zlib

HERE = os.path.dirname(os.path.abspath(__file__))
SS = 4  # supersampling per axis

COLOURS = {
    "healthy": (46, 157, 79),
    "degraded": (227, 162, 26),
    "down": (217, 59, 59),
    "paused": (138, 143, 152),
    "context": (59, 111, 217),
    "idle": (138, 143, 152),
}

def seg_dist(px, py, ax, ay, bx, by):
    dx, dy = bx - ax, by - ay
    t = max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy)))
    return math.hypot(px - ax - t * dx, py - ay - t * dy)

def inside(state, x, y):
    """Coverage test in a 64x64 design space centred on (32, 32)."""
    r = math.hypot(x - 32, y - 32)
    if 25 <= r <= 31:
        return True
    if state == "healthy":
        return r <= 16
    if state == "degraded":
        return r <= 16 and x <= 32
    if state == "down":
        return min(seg_dist(x, y, 22, 22, 42, 42), seg_dist(x, y, 42, 22, 22, 42)) <= 3.5
    if state == "paused":
        return (22 <= x <= 28 or 36 <= x <= 42) and 20 <= y <= 44
    if state == "context":
        return (29 <= x <= 35 and 17 <= y <= 36) or math.hypot(x - 32, y - 44) <= 3.8
    if state == "idle":  # no forwards yet: the empty ring
        return False
    if state == "app":
        return r <= 19
    raise ValueError(state)

def render(state, size, colour):
    px = []
    for j in range(size):
        for i in range(size):
            hits = 0
            for sj in range(SS):
                for si in range(SS):
                    x = (i + (si + 0.5) / SS) * 64 / size
                    y = (j + (sj + 0.5) / SS) * 64 / size
                    hits += inside(state, x, y)
            a = round(255 * hits / (SS * SS))
            px += [*colour, a]
    return px

def write_png(path, size, px):
    raw = b"".join(b"\0" + bytes(px[y * size * 4:(y + 1) * size * 4]) for y in range(size))
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))

def main():
    for state, colour in COLOURS.items():
        write_png(os.path.join(HERE, "tray", f"{state}.png"), 64, render(state, 64, colour))
        # macOS template images: black and alpha only; the menu bar tints them.
        write_png(os.path.join(HERE, "tray-template", f"{state}.png"), 44, render(state, 44, (0, 0, 0)))
    for name, size in [("32x32", 32), ("128x128", 128), ("icon", 512)]:
        write_png(os.path.join(HERE, "app", f"{name}.png"), size, render("app", size, (40, 92, 160)))

if __name__ == "__main__":
    main()
