"""A synthetic, CXR-LT-2023-shaped dataset (docs/design.md, "The demo dataset") so every stage runs anywhere.

Patients have 1-4 studies, studies 1-3 views (PA/AP, often a LATERAL); labels are per study, with
the 2023 training frequencies (exact quotas per split, so the tail still has a few positives),
`No Finding` exclusive of everything but `Support Devices`, and correlated findings (effusion and
edema with cardiomegaly, opacity with consolidation...). Every finding draws its own mark on a
chest-like phantom at a random place and strength; tail findings are fainter and smaller.
Everything is a function of the seed.
"""
from __future__ import annotations

import json
import shutil
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cxrlt.data.labels import COUNTS_2023, LABELS_2023, N_TRAIN_2023
from cxrlt.errors import CxrltError
from cxrlt.fileio import display_path, read_table, save_figure, write_bytes, write_csv, write_text

META_COLS = ["dicom_id", "subject_id", "study_id", "ViewPosition", "ViewCodeSequence_CodeMeaning", "path"]
VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral"}
L = {name: i for i, name in enumerate(LABELS_2023)}
PREVALENCE = np.array(COUNTS_2023, dtype=float) / N_TRAIN_2023
TAIL = PREVALENCE < 0.01

# Findings that make another more likely: (finding, given any of, weight multiplier).
CO_OCCURRENCE = [
    ("Edema", ("Cardiomegaly", "Pleural Effusion"), 3.0),
    ("Pleural Effusion", ("Cardiomegaly",), 2.0),
    ("Enlarged Cardiomediastinum", ("Cardiomegaly",), 3.0),
    ("Lung Opacity", ("Pneumonia", "Consolidation", "Edema", "Atelectasis", "Infiltration"), 4.0),
    ("Lung Lesion", ("Mass", "Nodule"), 6.0),
    ("Subcutaneous Emphysema", ("Pneumothorax", "Fracture"), 5.0),
    ("Pneumomediastinum", ("Pneumothorax", "Subcutaneous Emphysema"), 5.0),
    ("Support Devices", ("Edema", "Pleural Effusion", "Pneumothorax"), 1.5),
]
# Quota filling order: the "given" findings first.
FILL_ORDER = ["Cardiomegaly", "Pneumonia", "Consolidation", "Atelectasis", "Infiltration", "Mass",
              "Nodule", "Pneumothorax", "Fracture", "Pleural Effusion", "Edema"]
FILL_ORDER += [x for x in LABELS_2023 if x not in FILL_ORDER and x != "No Finding"]


# ----------------------------------------------------------------------------- labels and tables
def _study_labels(n_studies: int, min_pos: int, rng: np.random.Generator) -> np.ndarray:
    """(n_studies, 26) 0/1 with exact per-class quotas max(min_pos, round(prevalence * n))."""
    quota = np.maximum(min_pos, np.round(PREVALENCE * n_studies)).astype(int)
    y = np.zeros((n_studies, len(LABELS_2023)), np.uint8)
    nf, sd = L["No Finding"], L["Support Devices"]
    order = rng.permutation(n_studies)
    normal = order[: quota[nf]]
    abnormal = order[quota[nf]:]
    y[normal, nf] = 1
    # every abnormal study gets one primary finding, drawn in proportion to the quotas left
    left = quota.astype(float).copy()
    left[[nf, sd]] = 0
    for s in abnormal:
        c = rng.choice(len(left), p=left / left.sum())
        y[s, c] = 1
        left[c] = max(left[c] - 1, 1e-9)
    # the rest of each quota goes to "sicker" studies, more so where related findings are present
    sickness = rng.gamma(1.5, 1.0, n_studies)
    for name in FILL_ORDER:
        c = L[name]
        need = quota[c] - int(y[:, c].sum())
        pool = abnormal if c != sd else np.concatenate([abnormal, normal])
        pool = pool[y[pool, c] == 0]
        if need <= 0 or len(pool) == 0:
            continue
        w = sickness[pool].copy()
        for target, given, mult in CO_OCCURRENCE:
            if target == name:
                w *= np.where(y[np.ix_(pool, [L[g] for g in given])].any(1), mult, 1.0)
        if c == sd:  # devices are rarer on normal films
            w *= np.where(np.isin(pool, normal), 0.25, 1.0)
        pick = rng.choice(pool, size=min(need, len(pool)), replace=False, p=w / w.sum())
        y[pick, c] = 1
    return y


def _hex_id(rng) -> str:
    return "-".join(f"{int(x):08x}" for x in rng.integers(0, 2**32, 5, dtype=np.uint64))


def make_tables(n_images: dict[str, int], seed: int) -> dict[str, pd.DataFrame]:
    """One table per split with metadata + labels; patients are disjoint across splits."""
    rng = np.random.default_rng(seed)
    subjects = rng.choice(np.arange(10_000_000, 20_000_000), size=sum(n_images.values()), replace=False)
    studies = iter(rng.choice(np.arange(50_000_000, 60_000_000), size=sum(n_images.values()), replace=False))
    subj = iter(subjects)
    tables = {}
    for split, target in n_images.items():
        rows = []  # (subject, study, view) per image, grouped by study
        study_ids = []
        while len(rows) < target:
            sid = int(next(subj))
            for _ in range(min(4, 1 + rng.poisson(0.7))):
                st = int(next(studies))
                study_ids.append(st)
                frontal = "PA" if rng.random() < 0.6 else "AP"
                r = rng.random()
                views = [frontal] if r < 0.5 else [frontal, "LATERAL"] if r < 0.93 else [frontal, frontal, "LATERAL"]
                rows += [(sid, st, v) for v in views]
        rows = rows[:target]
        study_ids = list(dict.fromkeys(st for _, st, _ in rows))
        y_study = _study_labels(len(study_ids), min_pos=4 if split == "train" else 2, rng=rng)
        index = {st: i for i, st in enumerate(study_ids)}
        df = pd.DataFrame(rows, columns=["subject_id", "study_id", "ViewPosition"])
        df.insert(0, "dicom_id", [_hex_id(rng) for _ in range(len(df))])
        df["ViewCodeSequence_CodeMeaning"] = df["ViewPosition"].map(VIEW_MEANING)
        df["path"] = [f"files/p{s // 1_000_000}/p{s}/s{st}/{d}.jpg"
                      for s, st, d in zip(df.subject_id, df.study_id, df.dicom_id)]
        labels = y_study[[index[st] for st in df.study_id]]
        tables[split] = pd.concat([df, pd.DataFrame(labels, columns=LABELS_2023)], axis=1)
    return tables


# ----------------------------------------------------------------------------- the phantom
class Canvas:
    """Float image in [0, 1] with drawing helpers in normalised coordinates (x right, y down)."""

    def __init__(self, h: int, w: int):
        self.h, self.w = h, w
        self.img = np.zeros((h, w), np.float32)

    def p(self, x, y):
        return int(round(x * self.w)), int(round(y * self.h))

    def ax(self, ax, ay):
        return max(1, int(round(ax * self.w))), max(1, int(round(ay * self.h)))

    def layer(self):
        return np.zeros((self.h, self.w), np.float32)

    def add(self, layer, blur=0.0, mask=None):
        if blur > 0:
            layer = cv2.GaussianBlur(layer, (0, 0), blur * self.w / 256)
        if mask is not None:
            layer = layer * mask
        self.img += layer

    def px(self, t):  # a thickness in pixels, scaled to the image
        return max(1, int(round(t * self.w / 256)))


def _geometry(view: str, rng, flags: set) -> dict:
    j = lambda s=0.015: rng.normal(0, s)  # noqa: E731  anatomical jitter
    if view == "LATERAL":
        g = dict(lungs=[(0.50 + j(), 0.45 + j(), 0.25, 0.30)], heart=(0.38 + j(), 0.62, 0.12, 0.12),
                 med=(0.45, 0.55, 0.10, 0.45), knob=(0.52, 0.24), cp=[(0.30, 0.73), (0.70, 0.73)],
                 soft=[(0.08, 0.16)], spine_x=0.80, hila=[(0.50, 0.45)])
    else:
        g = dict(lungs=[(0.31 + j(), 0.46 + j(), 0.15, 0.29), (0.69 + j(), 0.46 + j(), 0.15, 0.29)],
                 heart=(0.55 + j(), 0.64 + j(0.01), 0.14, 0.11), med=(0.45, 0.57, 0.12, 0.62),
                 knob=(0.58, 0.27), cp=[(0.19, 0.72), (0.81, 0.72)], soft=[(0.04, 0.12), (0.88, 0.96)],
                 spine_x=0.51, hila=[(0.40, 0.44), (0.62, 0.44)])
    if view == "AP":  # AP films magnify the heart
        cx, cy, ax, ay = g["heart"]
        g["heart"] = (cx, cy, ax * 1.1, ay * 1.05)
    if "Cardiomegaly" in flags:
        cx, cy, ax, ay = g["heart"]
        g["heart"] = (cx, cy + 0.01, ax * rng.uniform(1.4, 1.6), ay * 1.15)
    if "Enlarged Cardiomediastinum" in flags:
        x0, x1, y0, y1 = g["med"]
        g["med"] = (x0 - 0.04, x1 + 0.04, y0, y1)
    if "Emphysema" in flags:
        g["lungs"] = [(cx, cy + 0.02, ax * 1.08, ay * 1.1) for cx, cy, ax, ay in g["lungs"]]
    return g


def _draw_base(c: Canvas, g: dict, view: str, rng, flags: set):
    body = c.layer()
    cv2.ellipse(body, c.p(0.5, 0.56), c.ax(rng.uniform(0.43, 0.49), 0.52), 0, 0, 360, 0.40, -1)
    c.add(body, blur=3)
    lungs = c.layer()
    for cx, cy, ax, ay in g["lungs"]:
        cv2.ellipse(lungs, c.p(cx, cy), c.ax(ax, ay), 0, 0, 360, 1.0, -1)
    lungs = cv2.GaussianBlur(lungs, (0, 0), 2 * c.w / 256)
    dark = 0.30 if "Emphysema" in flags else 0.25
    c.img -= dark * lungs
    x0, x1, y0, y1 = g["med"]
    med = c.layer()
    cv2.rectangle(med, c.p(x0, y0), c.p(x1, y1), 0.30, -1)
    cv2.ellipse(med, c.p(*g["heart"][:2]), c.ax(*g["heart"][2:]), 0, 0, 360, 0.30, -1)
    cv2.circle(med, c.p(*g["knob"]), c.ax(0.03, 0)[0], 0.28, -1)
    cv2.line(med, c.p(g["spine_x"], 0.05), c.p(g["spine_x"], 0.98), 0.18, c.px(9))
    c.add(med, blur=2.5)
    ribs = c.layer()
    for cx, cy, ax, ay in g["lungs"]:
        for k in range(9):
            y = cy - ay + (k + 0.5) * 2 * ay / 9
            cv2.ellipse(ribs, c.p(cx, y), c.ax(ax * 1.1, 0.05), 0, 200, 340, 0.07, c.px(2))
    if view != "LATERAL":
        cv2.line(ribs, c.p(0.15, 0.15), c.p(0.45, 0.19), 0.12, c.px(4))
        cv2.line(ribs, c.p(0.85, 0.15), c.p(0.55, 0.19), 0.12, c.px(4))
    c.add(ribs, blur=1, mask=lungs)
    return lungs


def _lung_point(g, rng, band=(0.0, 1.0), lung=None):
    cx, cy, ax, ay = g["lungs"][rng.integers(len(g["lungs"]))] if lung is None else g["lungs"][lung]
    t = rng.uniform(*band)
    y = cy - ay * 0.85 + t * 1.7 * ay * 0.85
    half = ax * 0.8 * np.sqrt(max(0.05, 1 - ((y - cy) / ay) ** 2))
    return cx + rng.uniform(-half, half), y


def _blob(c, rng, x, y, r, amp, blur, irregular=0.0):
    lay = c.layer()
    if irregular:
        ang = np.linspace(0, 2 * np.pi, 14, endpoint=False)
        rad = r * (1 + irregular * rng.uniform(-1, 1, len(ang)))
        pts = np.stack([(x + rad * np.cos(ang)) * c.w, (y + rad * np.sin(ang)) * c.h], 1).astype(np.int32)
        cv2.fillPoly(lay, [pts], amp)
    else:
        cv2.circle(lay, c.p(x, y), max(1, int(r * c.w)), amp, -1)
    c.add(lay, blur=blur)


def _mark(name: str, c: Canvas, g: dict, lungs, rng, a: float, k: float):
    """Draw one finding. a: strength (1 = clear), k: size factor."""
    if name in ("Cardiomegaly", "Enlarged Cardiomediastinum", "Emphysema", "No Finding"):
        if name == "Emphysema":  # flattened diaphragm: a dark band at the lung bases
            lay = c.layer()
            for cx, cy, ax, ay in g["lungs"]:
                cv2.ellipse(lay, c.p(cx, cy + ay * 0.75), c.ax(ax * 0.9, ay * 0.2), 0, 0, 180, -0.10 * a, -1)
            c.add(lay, blur=3)
        return  # the others are drawn by the geometry
    lay = c.layer()
    if name == "Atelectasis":  # plate-like band in a lower zone
        x, y = _lung_point(g, rng, (0.6, 0.95))
        ang = rng.uniform(-15, 15)
        cv2.ellipse(lay, c.p(x, y), c.ax(0.09 * k, 0.012 * k), ang, 0, 360, 0.32 * a, -1)
        c.add(lay, blur=1.5)
    elif name == "Calcification of the Aorta":  # thin bright rim on the aortic knob
        cv2.ellipse(lay, c.p(*g["knob"]), c.ax(0.036, 0.036), 0, 180 + rng.uniform(-30, 30), 330, 0.5 * a, c.px(1.5))
        c.add(lay, blur=0.5)
    elif name == "Consolidation":  # dense homogeneous patch
        x, y = _lung_point(g, rng, (0.3, 1.0))
        _blob(c, rng, x, y, 0.06 * k, 0.33 * a, blur=3, irregular=0.25)
    elif name == "Edema":  # bilateral perihilar haze + septal lines
        for hx, hy in g["hila"]:
            cv2.ellipse(lay, c.p(hx, hy), c.ax(0.09, 0.12), 0, 0, 360, 0.2 * a, -1)
        c.add(lay, blur=10, mask=lungs)
        lay = c.layer()
        for cx, cy, ax, ay in g["lungs"]:
            for _ in range(5):
                y = cy + ay * rng.uniform(0.3, 0.7)
                x = cx + np.sign(cx - 0.5 or 1) * ax * 0.75
                cv2.line(lay, c.p(x - 0.03, y), c.p(x + 0.03, y), 0.18 * a, c.px(1))
        c.add(lay, blur=0.6, mask=lungs)
    elif name == "Fibrosis":  # reticular net in the lower zones
        for _ in range(int(40 * k)):
            x, y = _lung_point(g, rng, (0.5, 1.0))
            d = rng.normal(0, 0.025, 2)
            cv2.line(lay, c.p(x, y), c.p(x + d[0], y + d[1]), 0.16 * a, c.px(1))
        c.add(lay, blur=0.6, mask=lungs)
    elif name == "Fracture":  # kinked bright callus on a lateral rib
        cx, cy, ax, ay = g["lungs"][rng.integers(len(g["lungs"]))]
        side = 1 if cx > 0.5 else -1
        x, y = cx + side * ax * 0.95, cy + rng.uniform(-0.5, 0.5) * ay
        s = 0.025 * k
        pts = np.array([c.p(x - s, y - s), c.p(x, y + 0.3 * s), c.p(x + s, y - s * 0.2)], np.int32)
        cv2.polylines(lay, [pts], False, 0.45 * a, c.px(2.5))
        c.add(lay, blur=0.7)
    elif name == "Hernia":  # retrocardiac round lucency with an air-fluid level
        x, y = g["heart"][0] - 0.02, g["heart"][1] + 0.02
        r = 0.05 * k
        cv2.circle(lay, c.p(x, y), int(r * c.w), -0.22 * a, -1)
        cv2.circle(lay, c.p(x, y), int(r * c.w), 0.25 * a, c.px(1.5))
        cv2.line(lay, c.p(x - r, y + r * 0.2), c.p(x + r, y + r * 0.2), 0.3 * a, c.px(1.5))
        c.add(lay, blur=0.8)
    elif name == "Infiltration":  # patchy faint mottling in one lung
        lung = rng.integers(len(g["lungs"]))
        for _ in range(7):
            x, y = _lung_point(g, rng, (0.2, 0.9), lung=lung)
            cv2.circle(lay, c.p(x, y), max(1, int(0.02 * k * c.w)), 0.16 * a, -1)
        c.add(lay, blur=2.5, mask=lungs)
    elif name == "Lung Lesion":  # irregular, spiculated-looking opacity
        x, y = _lung_point(g, rng)
        _blob(c, rng, x, y, 0.035 * k, 0.32 * a, blur=0.8, irregular=0.45)
    elif name == "Lung Opacity":  # large ill-defined haze
        x, y = _lung_point(g, rng)
        _blob(c, rng, x, y, 0.08 * k, 0.15 * a, blur=7)
    elif name == "Mass":  # large round well-defined opacity
        x, y = _lung_point(g, rng, (0.1, 0.8))
        _blob(c, rng, x, y, rng.uniform(0.055, 0.075) * k, 0.33 * a, blur=1.2)
    elif name == "Nodule":  # small round opacity
        x, y = _lung_point(g, rng)
        _blob(c, rng, x, y, rng.uniform(0.014, 0.022) * max(k, 0.8), 0.42 * a, blur=0.6)
    elif name == "Pleural Effusion":  # fluid filling a costophrenic angle, meniscus up the wall
        x, y = g["cp"][rng.integers(len(g["cp"]))]
        cv2.ellipse(lay, c.p(x, y + 0.02), c.ax(0.16 * k, 0.10 * k), rng.uniform(-10, 10), 0, 360, 0.35 * a, -1)
        c.add(lay, blur=3, mask=lungs)
    elif name == "Pleural Other":  # thin bright line along the lateral wall
        cx, cy, ax, ay = g["lungs"][rng.integers(len(g["lungs"]))]
        start = 330 if cx > 0.5 else 150
        cv2.ellipse(lay, c.p(cx, cy), c.ax(ax * 0.97, ay * 0.97), 0, start, start + 60, 0.4 * a, c.px(1.5))
        c.add(lay, blur=0.5)
    elif name == "Pleural Thickening":  # thick apical cap
        cx, cy, ax, ay = g["lungs"][rng.integers(len(g["lungs"]))]
        cv2.ellipse(lay, c.p(cx, cy), c.ax(ax * 0.95, ay * 0.96), 0, 220, 320, 0.3 * a, c.px(5 * k))
        c.add(lay, blur=1.5)
    elif name == "Pneumomediastinum":  # dark streaks along the mediastinal borders
        x0, x1, y0, y1 = g["med"]
        for x in (x0, x1, x0 + 0.01):
            cv2.line(lay, c.p(x, y0 + 0.05), c.p(x + rng.normal(0, 0.01), y1 - 0.1), -0.3 * a, c.px(1.2))
        c.add(lay, blur=0.5)
    elif name == "Pneumonia":  # lobar patch with air bronchograms
        x, y = _lung_point(g, rng, (0.4, 0.95))
        r = 0.07 * k
        _blob(c, rng, x, y, r, 0.27 * a, blur=4, irregular=0.2)
        for _ in range(3):
            ang = rng.uniform(0, 2 * np.pi)
            cv2.line(lay, c.p(x, y), c.p(x + 0.8 * r * np.cos(ang), y + 0.8 * r * np.sin(ang)), -0.15 * a, c.px(1.2))
        c.add(lay, blur=0.5)
    elif name == "Pneumoperitoneum":  # dark crescent under a hemidiaphragm
        cx, cy, ax, ay = g["lungs"][0]
        cv2.ellipse(lay, c.p(cx, cy + ay * 1.02), c.ax(ax * 0.8, 0.03), 0, 180, 360, -0.3 * a, c.px(3 * k))
        c.add(lay, blur=1)
    elif name == "Pneumothorax":  # dark apical rim without markings, thin visceral pleural line
        cx, cy, ax, ay = g["lungs"][rng.integers(len(g["lungs"]))]
        cv2.ellipse(lay, c.p(cx, cy - ay * 0.1), c.ax(ax * 0.98, ay * 0.92), 0, 200, 340, -0.16 * a, c.px(8 * k))
        c.add(lay, blur=1, mask=lungs)
        lay = c.layer()
        cv2.ellipse(lay, c.p(cx, cy - ay * 0.02), c.ax(ax * 0.82, ay * 0.78), 0, 210, 330, 0.25 * a, c.px(1))
        c.add(lay, blur=0.4)
    elif name == "Subcutaneous Emphysema":  # dark streaks in the soft tissue of the wall
        x0, x1 = g["soft"][rng.integers(len(g["soft"]))]
        for _ in range(8):
            x, y = rng.uniform(x0, x1), rng.uniform(0.3, 0.75)
            cv2.line(lay, c.p(x, y), c.p(x + rng.normal(0, 0.01), y + 0.04), -0.25 * a, c.px(1.2))
        c.add(lay, blur=0.5)
    elif name == "Support Devices":  # tubes and lines, sometimes a pacemaker box
        xs = g["med"][0] + 0.04 + np.cumsum(rng.normal(0, 0.006, 8))
        ys = np.linspace(0.0, rng.uniform(0.55, 0.85), 8)
        pts = np.array([c.p(x, y) for x, y in zip(xs, ys)], np.int32)
        cv2.polylines(lay, [pts], False, 0.55 * a, c.px(2))
        if rng.random() < 0.4:
            x, y = rng.uniform(0.15, 0.3), rng.uniform(0.12, 0.22)
            cv2.rectangle(lay, c.p(x, y), c.p(x + 0.07, y + 0.05), 0.6 * a, -1)
        c.add(lay, blur=0.4)
    elif name == "Tortuous Aorta":  # wavy descending aortic contour
        ys = np.linspace(0.28, 0.62, 20)
        xs = g["knob"][0] + 0.015 + 0.018 * np.sin(ys * rng.uniform(25, 35)) * k
        pts = np.array([c.p(x, y) for x, y in zip(xs, ys)], np.int32)
        cv2.polylines(lay, [pts], False, 0.25 * a, c.px(3))
        c.add(lay, blur=1)
    else:  # pragma: no cover - a label list change without a mark
        raise KeyError(name)


def render(labels: np.ndarray, view: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """One synthetic film (uint8, h x w) showing the findings in the 0/1 vector `labels`."""
    names = [LABELS_2023[i] for i in np.flatnonzero(labels)]
    flags = set(names)
    c = Canvas(h, w)
    c.img += 0.04
    g = _geometry(view, rng, flags)
    lungs = _draw_base(c, g, view, rng, flags)
    for name in names:
        i = L[name]
        a = rng.uniform(0.55, 1.0) * (0.6 if TAIL[i] else 1.0)
        k = rng.uniform(0.8, 1.2) * (0.75 if TAIL[i] else 1.0)
        _mark(name, c, g, lungs, rng, a, k)
    if rng.random() < 0.5:  # a side marker, as on real films
        cv2.putText(c.img, "L" if rng.random() < 0.5 else "R", c.p(0.86, 0.1), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5 * w / 256, 0.8, max(1, w // 200))
    img = cv2.GaussianBlur(c.img, (0, 0), 0.8 * w / 256)
    ang, sc = rng.uniform(-5, 5), rng.uniform(0.95, 1.05)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), ang, sc)
    m[:, 2] += rng.uniform(-0.03, 0.03, 2) * (w, h)
    img = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_CONSTANT, borderValue=0.04)
    contrast, bright, gamma = rng.uniform(0.85, 1.2), rng.uniform(-0.05, 0.08), rng.uniform(0.8, 1.25)
    img = np.clip(img * contrast + bright, 0, 1) ** gamma
    img = img + rng.normal(0, 0.02, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


# ----------------------------------------------------------------------------- writing the demo
def _render_job(job):
    out_dir, rel, labels, view, h, w, seed_seq = job
    img = render(np.asarray(labels), view, h, w, np.random.default_rng(seed_seq))
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    write_bytes(Path(out_dir) / rel, buf.tobytes())




def render_all(jobs: list, fn, label: str, workers: int, progress: bool) -> None:
    """Run the render jobs whose file is not written yet (resume), in `workers` processes for many."""
    from cxrlt.progress import progress_bar

    jobs = [j for j in jobs if not (Path(j[0]) / j[1]).is_file()]
    bar = progress_bar(len(jobs), label, "img", progress)
    if workers > 1 and len(jobs) > 200:
        with get_context("fork").Pool(workers) as pool:
            for _ in pool.imap_unordered(fn, jobs, chunksize=32):
                bar.update()
    else:
        for j in jobs:
            fn(j)
            bar.update()
    bar.close()


def _made_before(out_dir: Path, meta_name: str, meta: dict, outputs: list, what: str, force: bool,
                 films: str = "files") -> bool:
    """True when out_dir holds `what` made with these settings (skip it); a folder made with other
    settings is refused unless force (then its generated films are removed); else the folder is
    (re)started with the settings recorded."""
    meta_file = out_dir / meta_name
    if meta_file.is_file() and not force:
        old = json.loads(meta_file.read_text())
        if old == meta and all(p.is_file() for p in outputs):
            return True
        if old != meta:
            raise CxrltError(f"{display_path(out_dir)}: holds {what} made with other settings ({old}); "
                             f"add --force to replace it")
    if force and meta_file.is_file():
        shutil.rmtree(out_dir / films, ignore_errors=True)  # only ever our own generated films
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(meta_file, json.dumps(meta))
    return False


def make_demo(out_dir: Path, n_train: int = 3000, n_dev: int = 500, n_test: int = 500, max_side: int = 384,
              seed: int = 0, workers: int = 2, force: bool = False, progress: bool = True) -> dict:
    """Write the demo dataset to out_dir; skip when a complete one with the same settings is there."""

    out_dir = Path(out_dir)
    meta = dict(n_train=n_train, n_dev=n_dev, n_test=n_test, max_side=max_side, seed=seed, version=1)
    csvs = [out_dir / f for f in ("train.csv", "development.csv", "test.csv", "sample_submission.csv")]
    if _made_before(out_dir, "demo_meta.json", meta, csvs, "a demo", force):
        return dict(meta, skipped=True)
    sizes = {"train": n_train, "development": n_dev, "test": n_test}
    tables = make_tables(sizes, seed)
    size_rng = np.random.default_rng([seed, 1])
    jobs = []
    for s_no, (split, df) in enumerate(tables.items()):
        y = df[LABELS_2023].to_numpy()
        for i in range(len(df)):
            w = int(max_side * size_rng.uniform(0.7, 1.0))
            h = int(min(max_side * 1.25, w * size_rng.uniform(0.85, 1.25)))
            jobs.append((str(out_dir), df.path.iloc[i], y[i], df.ViewPosition.iloc[i], h, w, [seed, 2, s_no, i]))
    render_all(jobs, _render_job, "demo images", workers, progress)
    # CSVs last: their presence marks a complete demo
    write_csv(out_dir / "train.csv", tables["train"])
    write_csv(out_dir / "development.csv", tables["development"])
    test = tables["test"][META_COLS]
    write_csv(out_dir / "test.csv", test)
    order = np.random.default_rng([seed, 3]).permutation(len(test))
    sub = pd.DataFrame({"dicom_id": test.dicom_id.to_numpy()[order]})
    sub[LABELS_2023] = 0.0
    write_csv(out_dir / "sample_submission.csv", sub)
    contact_sheet(out_dir, tables["train"])
    return dict(meta, skipped=False, images={k: len(v) for k, v in tables.items()})


def contact_sheet(out_dir: Path, train: pd.DataFrame, n: int = 24) -> Path:
    """A grid of training films, each titled with its labels, so a person sees the findings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = train[LABELS_2023].to_numpy()
    picks, seen = [], set()
    frontal = (train.ViewPosition != "LATERAL").to_numpy()
    # rarest classes first, preferring films with few findings so each mark is readable
    for c in np.argsort(PREVALENCE):
        cand = np.flatnonzero((y[:, c] == 1) & frontal)
        cand = [i for i in cand[np.argsort(y[cand].sum(1), kind="stable")] if i not in seen]
        if cand:
            picks.append(cand[0])
            seen.add(cand[0])
    picks += [i for i in np.flatnonzero(train.ViewPosition == "LATERAL")[:2]]
    picks = picks[:n]
    cols = 6
    fig, axes = plt.subplots(int(np.ceil(len(picks) / cols)), cols, figsize=(cols * 2.6, 3.0 * np.ceil(len(picks) / cols)))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), picks):
        img = cv2.imread(str(out_dir / train.path.iloc[i]), cv2.IMREAD_GRAYSCALE)
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        names = [LABELS_2023[c] for c in np.flatnonzero(y[i])]
        ax.set_title(f"{train.ViewPosition.iloc[i]}: " + "\n".join(names), fontsize=7)
    fig.suptitle("Synthetic CXR-LT demo: training films and their labels", fontsize=11)
    return save_figure(out_dir / "contact_sheet.png", fig)


# A 2026-style relabelling of the demo (a subset of its findings under PadChest-like names), for
# the fine-tuning example of model.init_from: some names match through models.transfer's aliases,
# "alveolar pattern" matches none (it starts fresh).
RELABEL = {"No Finding": "Normal", "Atelectasis": "atelectasis", "Cardiomegaly": "cardiomegaly",
           "Pleural Effusion": "pleural effusion", "Pneumoperitoneum": "pneumoperitoneo",
           "Tortuous Aorta": "aortic elongation", "Calcification of the Aorta": "aortic atheromatosis",
           "Pleural Thickening": "pleural thickening", "Fracture": "fracture", "Nodule": "Nodule", "Mass": "Mass",
           "Hernia": "Hernia", "Emphysema": "Emphysema", "Pneumothorax": "Pneumothorax",
           "Subcutaneous Emphysema": "Subcutaneous Emphysema", "Support Devices": "Support Devices",
           "Lung Opacity": "alveolar pattern"}


def make_relabelled(demo_dir: Path, folds_csv: Path, out_dir: Path, fold: int = 0) -> dict:
    """input/demo_relabelled/: the demo training images of one demo fold (those the demo's fold
    model never trained on, so a model started from it is scored honestly), development and test as
    they are, labels renamed by RELABEL; images stay in the demo folder."""
    from cxrlt.errors import CxrltError

    for f in (demo_dir / "train.csv", folds_csv):
        if not f.is_file():
            raise CxrltError(f"{f}: not found; make the demo and its folds first (stages 00 and 02 of experiments/demo.yaml)")
    train = read_table(demo_dir / "train.csv", "dicom_id")
    folds = read_table(folds_csv, "dicom_id").set_index("dicom_id").fold
    keep = train[folds.loc[train.dicom_id].to_numpy() == fold]
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = META_COLS + list(RELABEL)
    for name, df in (("train.csv", keep), ("development.csv", read_table(demo_dir / "development.csv", "dicom_id"))):
        write_csv(out_dir / name, df[cols].rename(columns=RELABEL))
    write_csv(out_dir / "test.csv", read_table(demo_dir / "test.csv", "dicom_id")[META_COLS])
    return dict(train=len(keep), labels=list(RELABEL.values()))


# The data.extra example (experiments/demo_extra.yaml): an external labelled set of new films (the
# demo's generator, another seed: none is a demo film, so no demo fold is leaked into), labelled for
# 8 of the 26 findings under the relabelled demo's names (one, "alveolar pattern", needs the recipe's
# map), a few cells uncertain (-1) or blank: every other finding is unlabelled for these films.
EXTRA_RELABEL = {"No Finding": "Normal", "Atelectasis": "atelectasis", "Cardiomegaly": "cardiomegaly",
                 "Pleural Effusion": "pleural effusion", "Pneumothorax": "Pneumothorax",
                 "Support Devices": "Support Devices", "Fracture": "fracture", "Lung Opacity": "alveolar pattern"}


def make_external(out_dir: Path, n: int = 600, max_side: int = 384, seed: int = 101, workers: int = 2,
                  uncertain: float = 0.05, blank: float = 0.02, force: bool = False, progress: bool = True) -> dict:
    """input/demo_extra/: n new synthetic films (images under files/) and labels.csv with columns
    image, file, patient, view and the EXTRA_RELABEL names; a share `uncertain` of the positive cells
    is written -1 and a share `blank` of all cells left empty. Skips when complete with the same settings."""
    out_dir = Path(out_dir)
    meta = dict(n=n, max_side=max_side, seed=seed, uncertain=uncertain, blank=blank, version=1)
    labels_csv = out_dir / "labels.csv"
    if _made_before(out_dir, "demo_extra_meta.json", meta, [labels_csv], "a demo external set", force):
        return dict(meta, skipped=True)
    df = make_tables({"train": n, "development": 0, "test": 0}, seed)["train"]
    y = df[LABELS_2023].to_numpy()
    size_rng = np.random.default_rng([seed, 21])
    jobs = []
    for i in range(len(df)):
        w = int(max_side * size_rng.uniform(0.7, 1.0))
        h = int(min(max_side * 1.25, w * size_rng.uniform(0.85, 1.25)))
        jobs.append((str(out_dir), df.path.iloc[i], y[i], df.ViewPosition.iloc[i], h, w, [seed, 22, i]))
    render_all(jobs, _render_job, "demo external set", workers, progress)
    rng = np.random.default_rng([seed, 23])
    cells = df[list(EXTRA_RELABEL)].to_numpy().astype(int).astype(object)
    cells[(cells == 1) & (rng.random(cells.shape) < uncertain)] = -1
    cells[rng.random(cells.shape) < blank] = ""
    out = pd.DataFrame({"image": df.dicom_id, "file": df.path, "patient": "x" + df.subject_id.astype(str),
                        "view": df.ViewPosition})
    out[list(EXTRA_RELABEL.values())] = cells
    write_csv(labels_csv, out)          # last: its presence marks a complete set
    return dict(meta, skipped=False, images=len(out), labels=list(EXTRA_RELABEL.values()))


# ----------------------------------------------------------------------------- the single-label demo
def single_label_counts(n_train: int, n_classes: int, imbalance: float = 25.0) -> np.ndarray:
    """Training images per class, geometric from the first (most frequent) class down to
    1/imbalance of it (the benchmark's imbalance factor is ~4,500-6,500; a tiny demo keeps >= 4)."""
    r = np.power(1.0 / imbalance, np.arange(n_classes) / max(n_classes - 1, 1))
    counts = np.maximum(4, np.round(r / r.sum() * n_train)).astype(int)
    counts[0] += n_train - counts.sum()
    return counts


def make_single_label_demo(out_dir: Path, n_train: int = 1000, val_per_class: int = 10, test_per_class: int = 20,
                           n_test: int = 300, max_side: int = 192, seed: int = 0, workers: int = 2,
                           force: bool = False, progress: bool = True) -> dict:
    """A synthetic NIH-CXR-LT-shaped single-label dataset (issue: the single-label benchmark): one
    finding per film (LABELS_DEMO_SINGLE, long-tailed), the benchmark's four CSVs: train,
    balanced-val (val_per_class per class), test (natural distribution) and balanced-test
    (test_per_class per class), columns id, path, the labels (one-hot), subject_id. Patients (1-3
    films each) are disjoint across the four splits. Skips when a complete one with the same
    settings is there."""
    from cxrlt.data.labels import LABELS_DEMO_SINGLE

    out_dir = Path(out_dir)
    names = list(LABELS_DEMO_SINGLE)
    meta = dict(n_train=n_train, val_per_class=val_per_class, test_per_class=test_per_class, n_test=n_test,
                max_side=max_side, seed=seed, version=1)
    files = ("train.csv", "balanced-val.csv", "test.csv", "balanced-test.csv")
    if _made_before(out_dir, "demo_meta.json", meta, [out_dir / f for f in files], "a single-label demo", force,
                    films="images"):
        return dict(meta, skipped=True)
    rng = np.random.default_rng([seed, 10])
    counts = single_label_counts(n_train, len(names))
    natural = counts / counts.sum()
    test_counts = np.maximum(1, np.round(natural * n_test)).astype(int)
    per_split = {"train": counts, "balanced-val": np.full(len(names), val_per_class),
                 "test": test_counts, "balanced-test": np.full(len(names), test_per_class)}
    next_subject = iter(rng.choice(np.arange(1, 99_999_999), size=sum(int(c.sum()) for c in per_split.values()),
                                   replace=False))
    tables, jobs = {}, []
    for s_no, (split, cnt) in enumerate(per_split.items()):
        cls = rng.permutation(np.repeat(np.arange(len(names)), cnt))
        rows, i = [], 0
        while i < len(cls):          # a patient has 1-3 films (each with its own finding)
            subject, n = int(next(next_subject)), int(min(len(cls) - i, 1 + rng.poisson(0.5)))
            for j in range(n):
                rows.append((f"{subject:08d}_{j:03d}.png", subject, int(cls[i + j])))
            i += n
        df = pd.DataFrame(rows, columns=["id", "subject_id", "cls"])
        df["path"] = "images/" + df["id"]
        onehot = np.eye(len(names), dtype=int)[df.pop("cls").to_numpy()]
        tables[split] = pd.concat([df[["id", "path"]], pd.DataFrame(onehot, columns=names), df[["subject_id"]]], axis=1)
        size_rng = np.random.default_rng([seed, 11, s_no])
        for r, lab in zip(df["path"], onehot):
            w = int(max_side * size_rng.uniform(0.8, 1.0))
            h = int(min(max_side * 1.2, w * size_rng.uniform(0.9, 1.2)))
            y23 = np.zeros(len(LABELS_2023), int)
            y23[L[names[int(lab.argmax())]]] = 1
            view = "PA" if size_rng.random() < 0.6 else "AP"
            jobs.append((str(out_dir), r, y23, view, h, w, [seed, 12, s_no, len(jobs)]))
    render_all(jobs, _render_png_job, "single-label demo images", workers, progress)
    for split, df in tables.items():       # CSVs last: their presence marks a complete demo
        write_csv(out_dir / f"{split}.csv", df)
    return dict(meta, skipped=False, images={k: len(v) for k, v in tables.items()},
                train_counts=dict(zip(names, counts.tolist())))


def _render_png_job(job):
    out_dir, rel, labels, view, h, w, seed_seq = job
    img = render(np.asarray(labels), view, h, w, np.random.default_rng(seed_seq))
    ok, buf = cv2.imencode(".png", img)
    write_bytes(Path(out_dir) / rel, buf.tobytes())
