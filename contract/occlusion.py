"""Occlusion maps (Zeiler and Fergus 2014): how far a class's probability falls when one cell of a grid over the
picture is hidden. The slow and faithful heatmap, beside the graph's Grad-CAM (training.cam), which is free but
reads only the last feature map.

Why both: on the demo model's 153 test photos, hiding the 20 % of pixels a map ranks highest lowered the class's
probability more than hiding random blobs on 76-77 % of photos with Grad-CAM and on 90-94 % with occlusion at the
same 7 x 7 grid, by the random draw (bench/RESULTS.md, 2026-12-02). The fine-tuned two-class head reads "ant" as
"no bee" spread over the whole picture, which a weighted sum of the last feature map cannot localise; hiding the
picture shows it. The price is one model run per cell (49 at 224 px), so the service bounds the images a request
may ask this for.

Hidden cells take the ImageNet mean colour (the average photo's: no new edges inside the cell), as in the deletion
check (training.deletion), so a map is judged by the same perturbation it was made with. Pure numpy: the service,
training and the benches share it.
"""
from __future__ import annotations

import numpy as np

FILL = np.array([124, 116, 104], np.uint8)  # ImageNet's mean RGB


def cell_edges(size: int, cells: int) -> np.ndarray:
    """Pixel edges of `cells` near-equal cells over `size` pixels (cells + 1 values, 0 first, size last)."""
    return np.round(np.linspace(0, size, cells + 1)).astype(int)


def occluded(pixels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """uint8 [S, S, 3] -> [h * w, S, S, 3]: the picture once per cell of an h x w grid, that cell hidden (row-major)."""
    h, w = grid
    rows, cols = cell_edges(pixels.shape[0], h), cell_edges(pixels.shape[1], w)
    out = np.repeat(pixels[None], h * w, axis=0)
    for i in range(h):
        for j in range(w):
            out[i * w + j, rows[i]:rows[i + 1], cols[j]:cols[j + 1]] = FILL
    return out


def occlusion_maps(before: np.ndarray, after: np.ndarray, classes: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """before: probabilities [N, C] of the pictures; after: [N * h * w, C] of occluded()'s copies, picture by picture;
    classes: int [N, M] the classes to map -> float32 [N, M, h, w], the fall of each class's probability when that
    cell is hidden: negative where hiding it raises the probability (evidence against the class). Kept signed, not
    clipped at 0 as Grad-CAM's ReLU clips: where hiding most cells raises the class (the demo's "ant", read as "no bee
    anywhere"), the ties a clip leaves would be ranked by chance, and the demo's occlusion maps beat chance on 82 %
    of photos clipped against 90 % signed (bench/RESULTS.md, 2026-12-02)."""
    n, m = classes.shape
    h, w = grid
    after = after.reshape(n, h * w, -1)
    rows = np.arange(n)[:, None]
    fall = before[rows, classes][:, :, None] - np.take_along_axis(after, classes[:, None, :], axis=2).transpose(0, 2, 1)
    return fall.reshape(n, m, h, w).astype(np.float32)
