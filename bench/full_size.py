"""Cost of every stage at a fraction of the competition's size: stages 01-08 through the real scripts.

    python bench/full_size.py --fraction 0.02 --out /tmp/f002.json [--labels 40] [--workdir DIR] [--folds 3]

Makes CSVs of F x the CXR-LT 2023 size (264,849 training films of 45,631 patients in 155,133
studies, 39,293 development, ~36,000 test; patients disjoint across splits) with the 2023 preset's
columns and long-tailed labels per study following the 2023 training counts scaled by F
(`--labels 40`: the 2024 task-1 shape, preset cxr-lt-2024-task1, its 14 findings without a 2023
count drawn as tail classes of 100-3,000 films at full size). Every row points to one of a small
pool of tiny PNGs (--pool, 64), so stage 01 pays per row but decodes little.

Everything is written in a work dir (a temp dir unless --workdir; removed unless --keep or
--workdir): recipes there set data.input_dir, cache.dir, folds.dir, output_dir, submission.dir
and compare.dir inside it, nothing is written in the repository. The stages run as subprocesses of
the real scripts with a tiny model (test_resnet, 32 px cache, 1 epoch of --steps steps, K folds):

  01 cache, 02 folds (once); 03 train and 04 predict for --members member recipes (their seed and
  loss differ); 05 blend of the members; 06 thresholds and 07 submission (+ --check) of the blend;
  08 compare of the members.

For each stage (members summed) it writes wall time, CPU time (user+sys of the stage's process
and the processes it waited for, from os.wait4), peak RSS (the largest of them) and the rows the
stage handles to --out as {"stages": {"01": {"wall_s", "cpu_s", "peak_rss_mb", "rows", ...}, ...}}
and prints a table. A stage that fails is recorded with its exit code and the tail of its log
(the run stops there: later stages need its outputs).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cxrlt.data.labels import COUNTS_2023, LABELS_2023, LABELS_2024, N_TRAIN_2023  # noqa: E402

# The 2023 release: training films, patients and studies; development films; test films (about).
FULL = dict(train=N_TRAIN_2023, dev=39_293, test=36_000, patients=45_631, studies=155_133)
VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral"}
PRESET = {26: dict(preset="cxr-lt-2023", dir="cxr-lt-2023", train="train.csv", dev="development.csv",
                   test="test.csv", path_col="path", labels=LABELS_2023, normal="No Finding"),
          40: dict(preset="cxr-lt-2024-task1", dir="cxr-lt-2024", train="train_labeled.csv", dev="development.csv",
                   test="test_task1.csv", path_col="fpath", labels=LABELS_2024, normal="Normal")}
STAGES = ("01", "02", "03", "04", "05", "06", "07", "08")


# ----------------------------------------------------------------------------- data
def full_counts(labels: list[str]) -> np.ndarray:
    """Training positives at full size: the 2023 counts by name ('Normal' = 'No Finding'), the
    others spread log-evenly over 100-3,000 (tail classes), in a fixed order."""
    known = dict(zip(LABELS_2023, COUNTS_2023))
    known["Normal"] = known["No Finding"]
    new = [x for x in labels if x not in known]
    tail = dict(zip(new, np.geomspace(3000, 100, max(len(new), 1)).round().astype(int)))
    return np.array([known.get(x, tail.get(x)) for x in labels], dtype=float)


def study_labels(n_studies: int, images_per_study: float, counts: np.ndarray, labels: list[str], normal: str,
                 min_pos: int, rng) -> np.ndarray:
    """(n_studies, C) 0/1: each class on max(min_pos, prevalence x n_studies) studies drawn at random
    ('sicker' studies likelier), the normal class exclusive of all but Support Devices."""
    prev = np.minimum(counts / FULL["train"], 0.9)
    quota = np.maximum(min_pos, np.round(prev * n_studies)).astype(int)
    y = np.zeros((n_studies, len(labels)), np.uint8)
    nf = labels.index(normal)
    sd = labels.index("Support Devices")
    order = rng.permutation(n_studies)
    normal_s, abnormal = order[:quota[nf]], order[quota[nf]:]
    y[normal_s, nf] = 1
    sick = rng.gamma(1.5, 1.0, n_studies)
    for c in range(len(labels)):
        if c == nf:
            continue
        pool = np.concatenate([abnormal, normal_s]) if c == sd else abnormal
        w = sick[pool] * (np.where(np.isin(pool, normal_s), 0.25, 1.0) if c == sd else 1.0)
        k = min(quota[c], len(pool))
        y[rng.choice(pool, size=k, replace=False, p=w / w.sum()), c] = 1
    return y


def make_split(n_rows: int, n_patients: int, n_studies: int, first_patient: int, first_study: int, rng) -> pd.DataFrame:
    """Rows (subject_id, study_id, ViewPosition): every patient >= 1 study, every study >= 1 film, the
    extra studies and films spread with a long tail (a few patients have many studies)."""
    n_studies = max(1, min(n_studies, n_rows))
    n_patients = max(1, min(n_patients, n_studies))
    w = rng.gamma(0.6, 1.0, n_patients)
    study_patient = np.concatenate([np.arange(n_patients),
                                    rng.choice(n_patients, n_studies - n_patients, p=w / w.sum())])
    row_study = np.concatenate([np.arange(n_studies), rng.integers(0, n_studies, n_rows - n_studies)])
    row_study.sort(kind="stable")
    first = np.r_[True, row_study[1:] != row_study[:-1]]
    second = np.r_[False, first[:-1]] & ~first
    frontal = np.where(rng.random(n_studies) < 0.6, "PA", "AP")[row_study]
    view = np.where(second & (rng.random(n_rows) < 0.9), "LATERAL", frontal)
    return pd.DataFrame({"subject_id": first_patient + study_patient[row_study], "study_id": first_study + row_study,
                         "ViewPosition": view})


def make_data(work: Path, fraction: float, n_labels: int, pool: int, seed: int) -> dict:
    import cv2

    p = PRESET[n_labels]
    rng = np.random.default_rng(seed)
    labels = list(p["labels"])
    counts = full_counts(labels)
    img_dir = work / "input" / "mimic-cxr-jpg" / "files" / "pool"
    img_dir.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:56, 0:48]
    for k in range(pool):   # tiny chest-ish gradients with noise, a little different each
        img = 80 + 60 * np.cos((xx - 24) / (8 + k % 7)) + 40 * (yy / 56) + rng.normal(0, 12, yy.shape)
        cv2.imwrite(str(img_dir / f"{k:03d}.png"), np.clip(img, 0, 255).astype(np.uint8))
    ratio_p = FULL["patients"] / FULL["train"]
    ratio_s = FULL["studies"] / FULL["train"]
    sizes = {s: max(40, round(FULL[s] * fraction)) for s in ("train", "dev", "test")}
    out = {"labels": labels, "preset": p["preset"], "splits": {}}
    csv_dir = work / "input" / p["dir"]
    csv_dir.mkdir(parents=True, exist_ok=True)
    next_patient, next_study, next_id = 10_000_000, 50_000_000, 0
    for split, n in sizes.items():
        df = make_split(n, round(n * ratio_p), round(n * ratio_s), next_patient, next_study, rng)
        next_patient = int(df.subject_id.max()) + 1
        next_study = int(df.study_id.max()) + 1
        ids = [f"{next_id + i:08x}-{h:08x}" for i, h in enumerate(rng.integers(0, 2**32, n, dtype=np.uint64))]
        next_id += n
        df.insert(0, "dicom_id", ids)
        df["ViewCodeSequence_CodeMeaning"] = df.ViewPosition.map(VIEW_MEANING)
        df[p["path_col"]] = [f"files/pool/{k:03d}.png" for k in rng.integers(0, pool, n)]
        codes, uniq = pd.factorize(df.study_id)
        meta = dict(rows=n, patients=int(df.subject_id.nunique()), studies=len(uniq))
        if split != "test":
            y = study_labels(len(uniq), n / len(uniq), counts, labels, p["normal"], 4 if split == "train" else 2, rng)
            df = pd.concat([df, pd.DataFrame(y[codes], columns=labels)], axis=1)
            meta["positives"] = dict(zip(labels, df[labels].sum().astype(int).tolist()))
        df.to_csv(csv_dir / p[split], index=False)
        out["splits"][split] = meta
    return out


# ----------------------------------------------------------------------------- recipes and stages
def write_recipes(work: Path, preset: str, args) -> dict[str, Path]:
    import yaml

    rdir = work / "recipes"
    rdir.mkdir(parents=True, exist_ok=True)
    exp = work / "experiments"
    common = {
        "data": {"preset": preset, "input_dir": str(work / "input")},
        "cache": {"size": args.cache_size, "dir": str(work / "cache")},
        "folds": {"k": args.folds, "dir": str(work / "folds")},
        "model": {"name": args.model, "pretrained": False, "drop_path_rate": 0.0},
        "train": {"epochs": 1, "max_steps_per_epoch": args.steps, "batch_size": 32, "val_batch_size": 256,
                  "precision": "no", "workers": args.workers, "trackers": [], "warmup_epochs": 0.5},
        "predict": {"batch_size": 256, "workers": args.workers, "precision": "no"},
        "submission": {"dir": str(work / "submissions")},
        "compare": {"dir": str(exp)},
    }
    variants = [{"seed": 42}, {"seed": 43, "loss": {"name": "bce"}}, {"seed": 44, "loss": {"name": "asl"}}]
    recipes = {}
    for i in range(args.members):
        name = f"m{i + 1}"
        r = json.loads(json.dumps(common))
        for k, v in variants[i % len(variants)].items():
            r[k] = {**r.get(k, {}), **v} if isinstance(v, dict) else v
        r["name"], r["output_dir"] = name, str(exp / name)
        recipes[name] = rdir / f"{name}.yaml"
        recipes[name].write_text(yaml.safe_dump(r, sort_keys=False))
    blend = json.loads(json.dumps(common))
    blend.update(name="blend", output_dir=str(exp / "blend"),
                 blend={"members": [str(exp / m) for m in recipes], "mode": "fit"})
    recipes["blend"] = rdir / "blend.yaml"
    recipes["blend"].write_text(yaml.safe_dump(blend, sort_keys=False))
    return recipes


def run_timed(cmd: list[str], log: Path, timeout: float | None, threads: int = 0) -> dict:
    """Run cmd to completion; wall, CPU (user+sys of it and its waited-for children), peak RSS."""
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", PYTHONUNBUFFERED="1")
    if threads:   # torch/OpenMP threads of the stage (on a shared machine 1 avoids spinning threads)
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(log, "ab") as f:
        f.write(("\n$ " + " ".join(cmd) + "\n").encode())
        f.flush()
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
        timer = None
        if timeout:
            import threading

            timer = threading.Timer(timeout, p.kill)
            timer.start()
        _, status, ru = os.wait4(p.pid, 0)
        if timer:
            timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
    return dict(wall_s=wall, cpu_s=ru.ru_utime + ru.ru_stime, peak_rss_mb=ru.ru_maxrss / 1024, rc=p.returncode)


def csv_rows(path: Path) -> int | None:
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return max(0, sum(1 for _ in f) - 1)


def run_pipeline(work: Path, data: dict, recipes: dict, args) -> dict:
    py = args.python
    members = [m for m in recipes if m != "blend"]
    exp = work / "experiments"
    n = {s: data["splits"][s]["rows"] for s in ("train", "dev", "test")}
    total = n["train"] + n["dev"] + n["test"]
    cfg = lambda name: ["--config", str(recipes[name])]  # noqa: E731
    plan = [  # (stage, [commands], rows it handles)
        ("01", [[py, "src/01_prepare_images.py", *cfg(members[0])]], total),
        ("02", [[py, "src/02_make_folds.py", *cfg(members[0])]], n["train"]),
        ("03", [[py, "src/03_train.py", *cfg(m)] for m in members], n["train"] * len(members)),
        ("04", [[py, "src/04_predict.py", *cfg(m)] for m in members], total * len(members)),
        ("05", [[py, "src/05_blend.py", *cfg("blend")]], total),
        ("06", [[py, "src/06_thresholds.py", *cfg("blend")]], n["train"]),
        ("07", [[py, "src/07_make_submission.py", *cfg("blend")]], n["test"]),
        ("07_check", None, n["test"]),
        ("08", [[py, "src/08_compare.py", "--recipes", ",".join(str(recipes[m]) for m in members),
                 "--name", "bench"]], n["train"] * len(members)),
    ]
    log = work / "stages.log"
    stages = {}
    for stage, cmds, rows in plan:
        if stage not in args.stages and stage.split("_")[0] not in args.stages:
            continue
        if cmds is None:   # 07 --check: the zip stage 07 wrote
            zips = sorted((work / "submissions").glob("*.zip"))
            cmds = [[py, "src/07_make_submission.py", *cfg("blend"), "--check", str(zips[-1] if zips else "missing.zip")]]
        agg = dict(wall_s=0.0, cpu_s=0.0, peak_rss_mb=0.0, rows=rows, runs=len(cmds))
        print(f"stage {stage}: {len(cmds)} run(s)...", flush=True)
        for cmd in cmds:
            r = run_timed(cmd, log, args.stage_timeout, args.threads)
            agg["wall_s"] += r["wall_s"]
            agg["cpu_s"] += r["cpu_s"]
            agg["peak_rss_mb"] = max(agg["peak_rss_mb"], r["peak_rss_mb"])
            if r["rc"] != 0:
                tail = log.read_text(errors="replace").splitlines()[-15:]
                agg.update(rc=r["rc"], failed=" ".join(cmd[1:3]), log_tail=tail)
                break
        agg["outputs"] = outputs_of(stage, work, exp, members)
        stages[stage] = agg
        if agg.get("rc"):
            print(f"stage {stage} FAILED (exit {agg['rc']}):\n  " + "\n  ".join(agg["log_tail"]), file=sys.stderr)
            break
    return stages


def outputs_of(stage: str, work: Path, exp: Path, members: list[str]) -> dict:
    """Rows of what the stage wrote, to check it handled every row."""
    if stage == "01":
        return {"cached_files": sum(1 for _ in (work / "cache").rglob("*.png"))}
    if stage == "02":
        return {"folds_csv": sum(csv_rows(p) or 0 for p in (work / "folds").glob("*_folds.csv"))}
    if stage == "03":
        return {"best_pt": sum(1 for m in members for _ in (exp / m).glob("fold*/best.pt"))}
    if stage in ("04", "05"):
        names = members if stage == "04" else ["blend"]
        return {f"{m}/{f}": csv_rows(exp / m / f) for m in names for f in ("oof.csv", "development.csv", "test.csv")}
    if stage == "06":
        return {"thresholds_json": (exp / "blend" / "thresholds.json").is_file()}
    if stage == "07":
        return {"submission_csv": sum(csv_rows(p) or 0 for p in (work / "submissions").glob("*.csv") if p.name != "log.csv")}
    if stage == "08":
        return {"table_csv": csv_rows(exp / "compare_bench" / "table.csv")}
    return {}


def table(result: dict) -> str:
    lines = [f"{'stage':<9} {'rows':>9} {'runs':>4} {'wall_s':>9} {'cpu_s':>9} {'peak_MB':>8}  status"]
    for s, r in result["stages"].items():
        st = "ok" if not r.get("rc") else f"FAILED exit {r['rc']}"
        lines.append(f"{s:<9} {r['rows']:>9d} {r['runs']:>4d} {r['wall_s']:>9.1f} {r['cpu_s']:>9.1f} {r['peak_rss_mb']:>8.0f}  {st}")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fraction", type=float, required=True, help="F: rows = F x the 2023 release")
    p.add_argument("--out", type=Path, required=True, help="JSON file of the figures")
    p.add_argument("--labels", type=int, choices=sorted(PRESET), default=26, help="26: 2023 shape, 40: 2024 task 1")
    p.add_argument("--workdir", type=Path, help="work dir (kept); default a temp dir, removed at the end")
    p.add_argument("--keep", action="store_true", help="keep the temp work dir")
    p.add_argument("--folds", type=int, default=3, help="folds.k")
    p.add_argument("--members", type=int, default=3, help="member experiments (blend, compare)")
    p.add_argument("--steps", type=int, default=2, help="train.max_steps_per_epoch (1 epoch)")
    p.add_argument("--model", default="test_resnet")
    p.add_argument("--cache-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="train/predict loader workers")
    p.add_argument("--pool", type=int, default=64, help="distinct tiny PNGs the rows point to")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the stages (0: as set, torch's default)")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset (later stages need earlier outputs)")
    p.add_argument("--stage-timeout", type=float, default=None, help="kill a stage run after this many seconds")
    p.add_argument("--python", default=sys.executable)
    a = p.parse_args()
    a.stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    if a.members < 1 or a.folds < 2:
        p.error("--members >= 1 and --folds >= 2")
    work = a.workdir or Path(tempfile.mkdtemp(prefix="cxrlt-fullsize-"))
    work = work.resolve()
    if work == ROOT or ROOT in work.parents and work.parts[len(ROOT.parts)] in ("input", "folds", "experiments", "submissions", "src"):
        p.error(f"--workdir {work}: not inside the repository's own data folders")
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        data = make_data(work, a.fraction, a.labels, a.pool, a.seed)
        gen_s = time.perf_counter() - t0
        s = data["splits"]
        print(f"F={a.fraction}: {data['preset']}, train {s['train']['rows']} films / {s['train']['patients']} patients / "
              f"{s['train']['studies']} studies, development {s['dev']['rows']}, test {s['test']['rows']} "
              f"({gen_s:.1f} s to generate) in {work}", flush=True)
        recipes = write_recipes(work, data["preset"], a)
        load0 = os.getloadavg()
        stages = run_pipeline(work, data, recipes, a)
        result = dict(fraction=a.fraction, labels=len(data["labels"]), preset=data["preset"], folds=a.folds, threads=a.threads,
                      members=a.members, steps=a.steps, model=a.model, cache_size=a.cache_size,
                      splits={k: {kk: vv for kk, vv in v.items() if kk != "positives"} for k, v in s.items()},
                      train_positives=s["train"].get("positives"), generate_s=gen_s, cpus=os.cpu_count(),
                      loadavg_start=load0, loadavg_end=os.getloadavg(), time=time.strftime("%Y-%m-%d %H:%M:%S"),
                      stages=stages)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=1, default=float))
        print(table(result))
        print(f"load average {load0[0]:.1f} at start, {result['loadavg_end'][0]:.1f} at end on {os.cpu_count()} CPUs; "
              f"wrote {a.out}")
        if any(r.get("rc") for r in stages.values()):
            sys.exit(1)
    finally:
        if not a.workdir and not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
