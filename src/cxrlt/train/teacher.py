"""The teacher's fold-k logits for pseudo-labels and distillation (data/pseudo.py says why fold k's
targets come from fold k's model only): one inference pass of each teacher fold's best.pt over the
student's films of a split, written beside the teacher, cached.

`teacher_logits(cfg, teacher, splits, folds=None)` writes, per fold k and split,
`<teacher>/fold<k>/teacher_logits_<split>.csv` (id, then one logit column per teacher label: the
mean over the teacher's TTA views, predict.tta of its recipe) and last its `.json` stamp (the
checkpoint's size and mtime, its fold assignment hash, the films' hash, the labels): a second call
with the same checkpoint and films reads nothing and decodes nothing. Each fold checkpoint's recorded
fold assignment must be the student's (a model trained on other folds is refused before any pass).
Images come from the teacher's own image cache (its cache.size; stage 01 of the teacher's recipe).

    python -m cxrlt.train.teacher --config experiments/student.yaml --teacher teacher_name --splits test,dev
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from cxrlt.data.experiment import Experiment
from cxrlt.data.loader import CxrDataset, make_loader
from cxrlt.data.pseudo import ID_COL, check_teacher, ids_hash, logits_file, pseudo_films
from cxrlt.errors import CxrltError
from cxrlt.experiment import experiment_path, fold_ids
from cxrlt.fileio import display_path, intact, stamps, write_csv
from cxrlt.models.checkpoint import load, load_model
from cxrlt.models.inference import parse_views, predict_loader
from cxrlt.runtime import make_accelerator
from cxrlt.stage import read_stamp, seal


class _Counted:
    """A loader that moves a progress bar one step per batch."""

    def __init__(self, loader, bar):
        self.loader, self.bar = loader, bar

    def __iter__(self):
        for batch in self.loader:
            yield batch
            self.bar.update()


def _fresh(f, best, assignment: str, ids) -> bool:
    """The logits file is vouched for by its stamp (stage.seal) for this checkpoint, folds and films."""
    rec = read_stamp(f.with_suffix(".json")) or {}
    return (intact(rec.get("outputs"), f.parent) and rec.get("checkpoint") == stamps({"b": best})["b"]
            and rec.get("folds") == assignment and rec.get("ids") == ids_hash(ids))


def teacher_logits(cfg, teacher, splits, folds=None, progress: bool = True, accelerator=None) -> dict:
    """The logits files written (or found up to date) for the student recipe `cfg`: {(fold, split):
    file} of a teacher experiment; of a blend, {(fold, split, member folder name): file} for each
    member with a weight for that fold (data.pseudo.teacher_parts). folds: default every student
    fold; accelerator: the calling stage's (a trainer's), else one is made from the teacher's predict section."""
    from cxrlt.data.pseudo import teacher_parts

    blend = (experiment_path(str(teacher)) / "weights.json").is_file()
    out = {}
    for k in (fold_ids(cfg) if folds is None else list(folds)):
        for part, _ in teacher_parts(cfg, teacher, k):
            for (fk, s), f in _experiment_logits(cfg, part, splits, [k], progress, accelerator).items():
                out[(fk, s, part.name) if blend else (fk, s)] = f
    return out


def _experiment_logits(cfg, teacher, splits, folds=None, progress: bool = True, accelerator=None) -> dict:
    """{(fold, split): logits file} of one teacher experiment."""
    from cxrlt.progress import progress_bar

    t = check_teacher(cfg, teacher, splits)
    assignment = Experiment.of(cfg).assignment()
    views = parse_views(t.cfg.predict.tta)
    own = accelerator is None
    out = {}
    for k in (fold_ids(cfg) if folds is None else list(folds)):
        best = t.layout.best(k)
        jobs = []
        for s in splits:
            ids, files = pseudo_films(cfg, s, k, cache_cfg=t.cfg)   # the teacher's image size, the student's films
            f = logits_file(t.dir, k, s)
            out[(k, s)] = f
            if not _fresh(f, best, assignment, ids):
                jobs.append((s, ids, files, f))
        if not jobs:
            continue
        ck = load(best)
        recorded = (ck.get("fingerprint") or {}).get("folds")
        if recorded != assignment:
            raise CxrltError(f"{display_path(best)}: trained with fold assignment {recorded}, the student's is "
                             f"{assignment}: its fold-{k} model may have seen the student's fold-{k} films; use a "
                             f"teacher trained on the student's folds")
        net, arch = load_model(ck)
        if arch.get("kind", "image") != "image":
            raise CxrltError(f"{display_path(best)}: a {arch.get('kind')} model; teacher logits come from image models")
        accelerator = accelerator or make_accelerator(t.cfg.predict, "predict.precision")
        net = net.to(accelerator.device)
        labels = list(arch["labels"])
        for s, ids, files, f in jobs:
            loader = accelerator.prepare(make_loader(CxrDataset(files), int(t.cfg.predict.batch_size),
                                                     int(t.cfg.predict.workers), False))
            bar = progress_bar(len(loader), f"teacher fold {k} {s}", "batch", progress and accelerator.is_main_process)
            z, _, idx, extra = predict_loader(net, _Counted(loader, bar), accelerator, ck["mean"], ck["std"],
                                              bool(t.cfg.train.channels_last), views=views)
            bar.close()
            allv = [z, *(extra or {}).values()]
            mean = torch.stack(allv).mean(0).numpy()[np.argsort(idx.numpy())]
            if mean.shape != (len(ids), len(labels)):
                raise CxrltError(f"{display_path(best)}: gave {mean.shape} logits for {len(ids)} films and "
                                 f"{len(labels)} labels")
            if not accelerator.is_main_process:
                continue
            df = pd.DataFrame(mean.astype(np.float32), columns=labels)
            df.insert(0, ID_COL, list(ids))
            write_csv(f, df, float_format="%.9g")
            # the stamp last: it vouches for the CSV just written
            seal(f.with_suffix(".json"), dict(checkpoint=stamps({"b": best})["b"], folds=assignment, ids=ids_hash(ids),
                                              labels=labels, split=s, fold=int(k), views=["none", *views],
                                              films=len(ids)), outputs=[f])
        if own:
            accelerator.free_memory()
    return out


def main(argv=None) -> None:
    from cxrlt.cli import run_stage

    def run(argv):
        from cxrlt.config import load_config
        from cxrlt.data.pseudo import PSEUDO_SPLITS

        p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
        p.add_argument("--config", required=True, help="the student's recipe")
        p.add_argument("--teacher", required=True, help="a finished experiment (name under experiments/ or folder)")
        p.add_argument("--splits", default="test", help=f"comma-separated, of {', '.join(PSEUDO_SPLITS)} (default test)")
        p.add_argument("--fold", type=int, action="append", help="only these folds (repeatable); default all")
        p.add_argument("overrides", nargs="*", help="key=value overrides of the student's recipe")
        a = p.parse_args(argv)
        splits = [x.strip() for x in a.splits.split(",") if x.strip()]
        bad = [x for x in splits if x not in PSEUDO_SPLITS]
        if bad or not splits:
            raise CxrltError(f"--splits: one or more of {', '.join(PSEUDO_SPLITS)}, comma-separated, not '{a.splits}'")
        cfg = load_config(a.config, a.overrides)
        written = teacher_logits(cfg, a.teacher, splits, a.fold)
        for (k, s), f in sorted(written.items()):
            print(f"fold {k} {s}: {display_path(f)}")

    run_stage(run, argv)


if __name__ == "__main__":
    main()
