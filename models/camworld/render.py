"""Drawing a world into RGB frames: a static textured background, coloured objects, grey distractors, then
the camera: lighting drift, an occasional shake, and fresh sensor noise on every frame."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .config import COLOURS, WorldConfig
from .world import Distractor, World, side_px

PAD = 2        # the canvas is drawn this much larger on each side so a shaken crop never shows an empty border
P_SHAKE = 0.12  # share of frames that jump


@lru_cache(maxsize=None)
def sprite(shape: str, side: int) -> np.ndarray:
    """Boolean mask of `shape` in a side x side box (read-only: shared between calls)."""
    c = (side - 1) / 2
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    if shape == "square":
        m = np.ones((side, side), bool)
    elif shape == "circle":
        m = (x - c) ** 2 + (y - c) ** 2 <= (side / 2) ** 2
    elif shape == "triangle":  # apex up, base along the bottom row
        m = np.abs(x - c) <= (y + 1) / 2
    elif shape == "cross":     # arms a third of the side wide
        arm = max(1.0, side / 6)
        m = (np.abs(x - c) <= arm) | (np.abs(y - c) <= arm)
    else:
        raise KeyError(shape)
    m.setflags(write=False)
    return m


def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of a small [gh, gw, C] grid to [h, w, C]."""
    gh, gw = grid.shape[:2]
    ys, xs = np.linspace(0, gh - 1, h), np.linspace(0, gw - 1, w)
    y0, x0 = np.minimum(ys.astype(int), gh - 2), np.minimum(xs.astype(int), gw - 2)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    a, b = grid[y0][:, x0], grid[y0][:, x0 + 1]
    c, d = grid[y0 + 1][:, x0], grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _distractor_mask(d: Distractor, h: int, w: int, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = x - (d.x + dx + PAD), y - (d.y + dy + PAD)
    ca, sa = np.cos(d.angle), np.sin(d.angle)
    along, across = u * ca + v * sa, -u * sa + v * ca
    if d.kind == "blob":
        return (along / d.a) ** 2 + (across / d.b) ** 2 <= 1
    return (np.abs(along) <= d.a) & (np.abs(across) <= d.b / 2)


def background(world: World, rng: np.random.Generator) -> np.ndarray:
    """The static scene: low-contrast, low-saturation texture with the static distractors painted in."""
    cfg = world.config
    h, w = cfg.height + 2 * PAD, cfg.width + 2 * PAD
    base = rng.uniform(85, 150) + rng.uniform(-8, 8, 3)
    luma = _upsample(rng.normal(0, 1, (6, 6, 1)), h, w) * rng.uniform(12, 22)
    chroma = _upsample(rng.normal(0, 1, (4, 4, 3)), h, w) * 4
    grain = rng.normal(0, 3, (h, w, 1))
    bg = base + luma + chroma + grain
    for d in world.distractors:
        if d.vx == 0 and d.vy == 0:
            bg[_distractor_mask(d, h, w)] = d.grey
    return np.clip(bg, 0, 255).astype(np.uint8)


def render(world: World, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 [T, H, W, 3] and each object's drawn box per frame, int16 [T, n_objects, 4] as
    (x0, y0, x1, y1) in frame pixels, end-exclusive, clipped to the frame; -1 where it is not in view."""
    cfg: WorldConfig = world.config
    rng = np.random.default_rng([seed, 1])
    bg = background(world, rng)
    ch, cw = bg.shape[:2]
    moving = [d for d in world.distractors if d.vx or d.vy]
    colours = {o.id: np.clip(np.array(COLOURS[o.colour]) * o.shade, 0, 255).astype(np.uint8)
               for o in world.objects}
    T, H, W = cfg.num_frames, cfg.height, cfg.width
    frames = np.empty((T, H, W, 3), np.uint8)
    boxes = np.full((T, len(world.objects), 4), -1, np.int16)
    for i in range(T):
        t = cfg.frame_time(i)
        canvas = bg.copy()
        for d in moving:
            canvas[_distractor_mask(d, ch, cw, d.vx * t, d.vy * t)] = d.grey
        dx, dy = 0, 0
        if cfg.shake and rng.random() < P_SHAKE:
            dx, dy = (int(v) for v in rng.integers(-PAD, PAD + 1, 2))
        for oid, x, y in world.centres(t):
            obj = world.objects[oid]
            side = side_px(obj, cfg)
            x0, y0 = int(round(x - side / 2)) + PAD, int(round(y - side / 2)) + PAD
            cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + side, cw), min(y0 + side, ch)
            if cx0 >= cx1 or cy0 >= cy1:
                continue
            m = sprite(obj.shape, side)[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
            canvas[cy0:cy1, cx0:cx1][m] = colours[oid]
            fx0, fy0 = max(cx0 - PAD - dx, 0), max(cy0 - PAD - dy, 0)
            fx1, fy1 = min(cx1 - PAD - dx, W), min(cy1 - PAD - dy, H)
            if fx0 < fx1 and fy0 < fy1:
                boxes[i, oid] = (fx0, fy0, fx1, fy1)
        crop = canvas[PAD + dy:PAD + dy + H, PAD + dx:PAD + dx + W].astype(np.float32)
        crop *= world.lighting(t)
        crop += rng.standard_normal((H, W, 3), dtype=np.float32) * np.float32(cfg.noise_std)
        np.clip(crop, 0, 255, out=crop)
        frames[i] = crop  # float -> uint8 truncates; fine for noise-dithered values
    return frames, boxes
