"""The second-stage strategies of the fold trainer (train.trainer), for a recipe with
`stage2.from: <first-stage experiment>`: for each fold k, a model on top of the first stage's
frozen fold-k backbone, trained on that fold's training part only, so its out-of-fold predictions stay honest (the held-out fold touched neither stage).

- `crt`, classifier re-training (Kang et al., ICLR 2020, "Decoupling Representation and Classifier
  for Long-Tailed Recognition"): the classifier is re-initialised and trained alone on the cached
  pooled features with class-aware sampling (`stage2.sampler`); best.pt is the first-stage model
  with the new classifier.
- `tau_norm` (same paper): no training; each class's classifier weights scaled by 1 / |w_c|^tau,
  tau picked from `stage2.tau_grid` by macro-F1 at 0.5 on the fold's training part. A per-class
  positive scale leaves each class's ranking, hence its AP, unchanged: in multi-label (sigmoid)
  problems tau-norm moves decisions at a fixed threshold, not per-fold mAP.
- `fusion` (CheXFusion, models.fusion): a transformer over the cached token grids of a study's views.

Outputs are a first stage's (fold<k>/best.pt, last.pt, log.csv, val_predictions.csv, curve.png,
done.json), so stage 04, blends, thresholds and submissions treat the recipe as any experiment;
best.pt holds the whole model (backbone included) and rebuilds from the file alone.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from cxrlt.config import Config, save_resolved
from cxrlt.data.loader import CxrDataset, make_loader
from cxrlt.data.studies import pick_views, study_groups, study_labels, view_kinds, view_vocabulary
from cxrlt.errors import CxrltError
from cxrlt.experiment import FULL, check_fingerprint, experiment_path, fingerprint, given_split
from cxrlt.fileio import display_path, project_path, save_figure, stamps, write_csv
from cxrlt.models.checkpoint import load, load_model
from cxrlt.models.fusion import StudyFusion, StudyFusionNet, backbone_tokens, grid_tokens, pooled_features
from cxrlt.models.inference import predict_loader
from cxrlt.progress import progress_bar
from cxrlt.train.features import FeatureStore, cache_key
from cxrlt.train.loop import val_figures
from cxrlt.train.saver import write_best
from cxrlt.train.trainer import OUTPUTS, FoldContext, Plan, Strategy, seed_of



def first_stage_dir(cfg) -> Path:
    """experiments/<stage2.from>, or the folder it names when it is a path."""
    return experiment_path(str(cfg.stage2["from"]))


def _first_stage_hint(cfg, fold: int) -> str:
    recipe = project_path("experiments") / f"{cfg.stage2['from']}.yaml"
    if recipe.is_file():
        return f"train it first: src/03_train.py --config {display_path(recipe)} --fold {fold}"
    return "train it first"


def first_stage_checkpoint(cfg, fold: int, spec, folds_hash: str) -> tuple[Path, dict]:
    """The first stage's finished fold-k best.pt, checked against this recipe (same model, data,
    labels, folds); a one-line error naming what is missing or what differs."""
    base = first_stage_dir(cfg)
    done, best = base / f"fold{fold}" / "done.json", base / f"fold{fold}" / "best.pt"
    if not done.is_file() or not best.is_file():
        raise CxrltError(f"stage2.from '{cfg.stage2['from']}': fold {fold} is not finished (no {display_path(done)}); "
                         + _first_stage_hint(cfg, fold))
    ck = load(best)
    first = {k: v for k, v in fingerprint(cfg, spec, folds_hash).items() if k != "stage2"}
    check_fingerprint(ck.get("fingerprint", {}), first, best,
                      f"a second stage must share its first stage's model, data and folds: start this recipe with "
                      f"`base: {cfg.stage2['from']}.yaml`")
    return best, ck


class FeatureExtractor(torch.nn.Module):
    """A frozen model's features as one flat vector per image: pooled (what the classifier reads)
    or its feature map pooled to grid x grid tokens."""

    def __init__(self, net, grid: int | None):
        super().__init__()
        self.net, self.grid = net, grid

    def forward(self, x):
        if self.grid is None:
            return pooled_features(self.net, x)
        return grid_tokens(backbone_tokens(self.net, x), self.grid).flatten(1)


def cached_features(cfg, fold: int, net, ck_path: Path, ck: dict, ids, files, accelerator, progress: bool) -> dict:
    """{view: (n, dim) memory map} of every training image under fold `fold`'s backbone (train.features)."""
    s2 = cfg.stage2
    grid = int(s2.grid) if s2.method == "fusion" else None
    views = ["none", "hflip"] if float(cfg.augment.hflip) > 0 else ["none"]
    kind = "pooled" if grid is None else f"grid{grid}"
    store = FeatureStore(first_stage_dir(cfg) / "features" / f"fold{fold}" / kind,
                         cache_key(ck_path, ids, views, str(s2.cache_dtype), kind))
    accelerator.wait_for_everyone()    # every process reads the same resume point before any write
    if store.complete():
        return store.arrays()
    extractor = FeatureExtractor(net.to(accelerator.device).eval(), grid)
    bs, workers = int(s2.batch_features), int(s2.workers)

    def compute(lo: int, hi: int) -> dict:
        loader = accelerator.prepare(make_loader(CxrDataset(files[lo:hi]), bs, workers, False))
        feats, _, _, extra = predict_loader(extractor, loader, accelerator, ck["mean"], ck["std"], False,
                                            views=views[1:])
        return {"none": feats.numpy(), **{v: t.numpy() for v, t in (extra or {}).items()}}

    bar = progress_bar(len(ids), f"fold {fold} features ({kind})", "img", progress and accelerator.is_main_process)
    store.fill(compute, chunk=bs * 16, bar=bar, writer=accelerator.is_main_process)
    bar.close()
    accelerator.wait_for_everyone()
    return store.arrays()


class FeatureRows(Dataset):
    """Cached features of some training rows (crt): item i = (feature vector, labels, i); the
    hflip view's features with probability `hflip`, drawn per (seed, epoch, item): exact resume."""

    def __init__(self, arrays: dict, rows, y, hflip: float = 0.0, seed: int = 0):
        self.arrays, self.rows, self.labels = arrays, np.asarray(rows), np.asarray(y, np.float32)
        self.hflip, self.seed, self.epoch = float(hflip) if "hflip" in arrays else 0.0, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.rows)

    def _view(self, i: int) -> str:
        if not self.hflip:
            return "none"
        return "hflip" if np.random.default_rng((self.seed, self.epoch, i)).random() < self.hflip else "none"

    def __getitem__(self, i):
        x = torch.from_numpy(np.array(self.arrays[self._view(i)][self.rows[i]], np.float32))
        return x, torch.from_numpy(self.labels[i]), i


class StudyFeatures(FeatureRows):
    """Cached token grids of whole studies (fusion): item i = ((tokens (V, T, D), view kinds (V,),
    present (V,)), study labels, i); in training a random subset of a study's views when it has more
    than max_views, and the hflip view of all its images with probability `hflip`."""

    def __init__(self, arrays: dict, groups, kinds, y, max_views: int, tokens: int, train: bool,
                 hflip: float = 0.0, seed: int = 0):
        super().__init__(arrays, np.arange(len(groups)), y, hflip if train else 0.0, seed)
        self.groups, self.kinds, self.max_views, self.t, self.train = groups, kinds, int(max_views), int(tokens), train

    def __getitem__(self, i):
        rng = np.random.default_rng((self.seed, self.epoch, i, 1)) if self.train else None
        rows = pick_views(self.groups[i], self.max_views, rng)
        src = self.arrays[self._view(i)]
        x = np.zeros((self.max_views, self.t, src.shape[1] // self.t), np.float32)
        kinds, present = np.zeros(self.max_views, np.int64), np.zeros(self.max_views, bool)
        for j, r in enumerate(rows):
            x[j], kinds[j], present[j] = np.asarray(src[r], np.float32).reshape(self.t, -1), self.kinds[r], True
        return (torch.from_numpy(x), torch.from_numpy(kinds), torch.from_numpy(present)), torch.from_numpy(self.labels[i]), i


def _features_in(x, view="none"):
    return (x.float(),)


def _studies_in(x, view="none"):
    return x[0].float(), x[1], x[2]


class SecondStage(Strategy):
    """What cRT, fusion and tau-norm share: the first stage's finished fold-k backbone, checked
    before any image is read, and its cached features."""

    def __init__(self, cfg):
        self.s2 = cfg.stage2
        self.checkpoint = None

    def grad_accum(self, cfg) -> int:
        return 1

    def check(self, cfg, exp, fold) -> None:
        if fold == FULL:
            raise CxrltError("--full: a second stage has no full-data fit (it trains over each fold's backbone)")
        if fold not in exp.fold_ids:
            raise CxrltError(f"--fold {fold}: folds are {', '.join(map(str, exp.fold_ids))}")
        ck_path, ck = first_stage_checkpoint(cfg, fold, exp.spec, exp.assignment(fold))   # before any image is touched
        self.checkpoint = (ck_path, ck, stamps({"b": ck_path})["b"])

    def check_finished(self, done, frame, cfg, fold) -> None:
        if done.get("backbone") != self.checkpoint[2]:
            raise CxrltError(f"{display_path(frame.stamp)}: fold {fold} of '{self.s2['from']}' changed since this second "
                             f"stage was trained on it; retrain it with --force")

    def start(self, ctx: FoldContext):
        """The frozen first-stage model and its cached features: (net, arch, ck, feats, seconds)."""
        from accelerate.utils import set_seed

        cfg, fold, accelerator = ctx.cfg, ctx.fold, ctx.accelerator
        ck_path, ck, _ = self.checkpoint
        set_seed(seed_of(cfg, fold))
        net, arch = load_model(ck)
        if self.s2.method in ("crt", "tau_norm") and not isinstance(_classifier(net), torch.nn.Linear):
            raise CxrltError(f"stage2.method={self.s2.method} re-trains or re-scales a linear classifier; the first stage "
                             f"'{self.s2['from']}' has model.head={arch['model'].get('head', 'linear')}")
        accelerator.wait_for_everyone()
        t0 = time.time()
        table = ctx.exp.training()
        feats = cached_features(cfg, fold, net, ck_path, ck, table.ids.tolist(), table.files, accelerator, ctx.progress)
        return net, arch, ck, feats, dict(features=round(time.time() - t0, 1))

    def extra(self) -> dict:
        return dict(backbone=self.checkpoint[2], method=self.s2.method, stage1=str(self.s2["from"]))


def second_stage_strategy(cfg) -> SecondStage:
    return TauNorm(cfg) if cfg.stage2.method == "tau_norm" else FeatureHead(cfg)


class FeatureHead(SecondStage):
    """crt / fusion: epochs of a head over cached features, validated on the held-out fold."""

    def build(self, ctx: FoldContext) -> Plan:
        from accelerate.utils import set_seed

        cfg, fold, accelerator, exp = ctx.cfg, ctx.fold, ctx.accelerator, ctx.exp
        s2, spec, names = self.s2, exp.spec, ctx.names
        net, arch, ck, feats, seconds = self.start(ctx)
        table = exp.training()
        df, y, fold_of = table.df, table.y, table.fold_of
        tr, va = table.split(fold)
        base_seed = seed_of(cfg, fold)
        hflip = float(cfg.augment.hflip)
        set_seed(base_seed)   # the head's initial weights do not depend on whether the features were cached
        if s2.method == "crt":
            module = _classifier(net)
            module.reset_parameters()
            full, arch2, to_input = net, arch, _features_in
            train_ds = FeatureRows(feats, tr, y[tr], hflip, base_seed)
            val_ds, val_rows, expand = FeatureRows(feats, va, y[va]), va, None
            counts, n_items = y[tr].sum(0), len(tr)
            sampler = s2.sampler
        else:
            groups = study_groups(df, spec)
            if any(fold_of[g].min() != fold_of[g].max() for g in groups):
                raise CxrltError("a study has images in two folds (folds must group patients): remake the folds")
            g_fold = np.array([fold_of[g[0]] for g in groups])
            vocab = view_vocabulary(df[spec.view_col]) if spec.view_col and spec.view_col in df.columns else []
            kinds = view_kinds(df[spec.view_col], vocab) if vocab else np.zeros(len(df), np.int64)
            grid, t = int(s2.grid), int(s2.grid) ** 2
            dim = feats["none"].shape[1] // t
            ys = study_labels(y, groups)
            tr_s, va_s = np.flatnonzero(g_fold != fold), np.flatnonzero(g_fold == fold)
            module = StudyFusion(dim, len(names), grid, len(vocab) + 1, int(s2.dim), int(s2.layers), int(s2.heads))
            full = StudyFusionNet(net, module, grid)
            arch2 = dict(kind="study_fusion", backbone=arch, labels=names, num_classes=len(names),
                         image_size=arch["image_size"], resize=arch["resize"], mean=arch["mean"], std=arch["std"],
                         fusion=dict(in_dim=dim, grid=grid, dim=int(s2.dim), layers=int(s2.layers), heads=int(s2.heads)),
                         view_kinds=vocab, max_views=int(s2.max_views), task=spec.task)
            to_input = _studies_in
            train_ds = StudyFeatures(feats, [groups[i] for i in tr_s], kinds, ys[tr_s], s2.max_views, t, True, hflip,
                                     base_seed)
            val_ds = StudyFeatures(feats, [groups[i] for i in va_s], kinds, ys[va_s], s2.max_views, t, False)
            val_rows = np.concatenate([groups[i] for i in va_s])
            expand = np.repeat(np.arange(len(va_s)), [len(groups[i]) for i in va_s])
            counts, n_items, sampler = ys[tr_s].sum(0), len(tr_s), "random"
        bs = int(s2.batch_size)
        lcfg = Config(channels_last=False, grad_clip=float(cfg.train.grad_clip), log_every=int(cfg.train.log_every),
                      sampler=sampler, class_aware_t=cfg.train.class_aware_t, class_aware_cap=cfg.train.class_aware_cap)
        train_loader = accelerator.prepare(make_loader(train_ds, bs, 0, True, lcfg))
        val_loader = accelerator.prepare(DataLoader(val_ds, batch_size=max(bs, 256), shuffle=False))
        if len(train_loader) == 0:
            raise CxrltError(f"fold {fold}: {n_items} training items make no full batch of stage2.batch_size={bs}")
        y_val = y[val_rows]

        def check(model):
            logits, _, idx, _ = predict_loader(model, val_loader, accelerator, 0.0, 1.0, False, to_input=to_input)
            return _val_figures(logits[np.argsort(idx.numpy())], y_val, names, expand, spec.task)

        def after(summary):
            print(f"fold {fold}: {s2.method} over '{s2['from']}' done, val mAP {summary['best_mAP']:.4f} "
                  f"(features {summary['seconds']['features']:.0f} s, training {summary['seconds']['train']:.0f} s)")

        return Plan(module=module, train_ds=train_ds, train_loader=train_loader, validate=check,
                    val_ids=table.ids.iloc[val_rows], epochs=int(s2.epochs), batches=len(train_loader), counts=counts,
                    n_items=n_items, arch=arch2, mean=ck["mean"], std=ck["std"], loop_cfg=lcfg, lr=float(s2.lr),
                    weight_decay=float(s2.weight_decay), warmup_epochs=0.0,
                    label=f"fold {fold} {s2.method}", title=f"{cfg.name} fold {fold} ({s2.method})",
                    # every parameter decays, biases included (as before the move to timm's optimizer factory)
                    filter_bias_and_bn=False, to_input=to_input, best_state=lambda: full.state_dict(), to_device=(full,),
                    # last.pt also records the backbone: resuming over a retrained first-stage fold is refused
                    resume_fingerprint=dict(ctx.fingerprint, backbone=list(self.checkpoint[2])),
                    init=f"{ck.get('init', 'unknown')} + {s2.method}", patience=cfg.train.patience,
                    summary_extra=self.extra(), seconds=seconds, after=after)


class TauNorm(SecondStage):
    """Scale the classifier's class weights by 1 / |w_c|^tau for each tau of stage2.tau_grid; keep the
    tau with the best macro-F1 at 0.5 on the fold's training part (the held-out fold is only reported).
    data.task=multiclass: the best balanced accuracy of the argmax, on the training part with K folds,
    on the validation CSV with folds.scheme=given (the set the benchmark selects on; a model fitted to
    its training images classifies them nearly perfectly at any tau)."""

    def build(self, ctx: FoldContext) -> dict:
        from sklearn.metrics import balanced_accuracy_score, f1_score

        cfg, fold, accelerator, exp = ctx.cfg, ctx.fold, ctx.accelerator, ctx.exp
        spec, names, out = exp.spec, ctx.names, ctx.frame.folder
        net, arch, ck, feats, seconds = self.start(ctx)
        if ctx.frame.force:   # the finished fold comes back if this run fails
            ctx.frame.set_aside(OUTPUTS)
        t0 = time.time()
        table = exp.training()
        df, y = table.df, table.y
        tr, va = table.split(fold)
        clf = _classifier(net)
        w, b = clf.weight.detach().double().clone(), clf.bias.detach().double() if clf.bias is not None else 0.0
        norms = w.norm(dim=1, keepdim=True)
        f_tr, f_va = (torch.from_numpy(np.asarray(feats["none"][r], np.float64)) for r in (tr, va))
        rows = []
        for tau in [float(t) for t in cfg.stage2.tau_grid]:
            wt = w / norms ** tau
            lt, lv = f_tr @ wt.T + b, f_va @ wt.T + b
            v = _val_figures(lv.float(), y[va], names, task=spec.task)
            if spec.multiclass:
                row = dict(tau=tau, train_bAcc=balanced_accuracy_score(y[tr].argmax(1), lt.argmax(1).numpy()),
                           val_bAcc=v["val_bAcc"])
            else:
                row = dict(tau=tau, train_macro_f1=f1_score(y[tr], (lt > 0).numpy(), average="macro", zero_division=0),
                           val_macro_f1=f1_score(y[va], (lv > 0).numpy(), average="macro", zero_division=0))
            rows.append(dict(row, val_mAP=v["val_mAP"], val_mAUC=v["val_mAUC"], val_loss=v["val_loss"], _v=v))
        crit = ("val_bAcc" if given_split(cfg) else "train_bAcc") if spec.multiclass else "train_macro_f1"
        pick = max(range(len(rows)), key=lambda i: (rows[i][crit], -rows[i]["tau"]))
        tau, v = rows[pick]["tau"], rows[pick]["_v"]
        with torch.no_grad():
            clf.weight.copy_((w / norms ** tau).to(clf.weight.dtype))
        log = pd.DataFrame([{k: val for k, val in r.items() if k != "_v"} for r in rows])
        init = f"{ck.get('init', 'unknown')} + tau_norm"
        if accelerator.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            save_resolved(cfg, exp.dir / "config.yaml")
            write_best(exp.layout.best(fold), net.state_dict(), weights="tau_norm", arch=arch, epoch=0,
                       metrics=log.iloc[pick].to_dict(), fingerprint=ctx.fingerprint, init=init,
                       mean=ck["mean"], std=ck["std"])
            preds = pd.DataFrame(v["probs"], columns=names)
            preds.insert(0, spec.id_col, df[spec.id_col].to_numpy()[va])
            write_csv(out / "val_predictions.csv", preds)
            write_csv(out / "log.csv", log)
            _plot_tau(log, tau, out / "curve.png", f"{cfg.name} fold {fold} (tau-norm)")
            print(f"fold {fold}: tau-norm picks tau={tau:g} ({crit} {rows[pick][crit]:.4f}); val mAP {v['val_mAP']:.4f}")
        seconds.update(train=round(time.time() - t0, 1))
        return dict(fold=fold, best_mAP=v["val_mAP"], best_score=v["score"], best_epoch=1, epochs=0, tau=tau, tau_by=crit,
                    score="val_bAcc" if spec.multiclass else "val_mAP", init=init, **self.extra(), seconds=seconds)


def _classifier(net):
    return net.get_classifier() if hasattr(net, "get_classifier") else None


def _val_figures(logits: torch.Tensor, y: np.ndarray, names, expand=None, task: str = "multilabel") -> dict:
    """Validation figures of item logits (train.loop.val_figures); `expand` maps image rows to their
    study's item (fusion: a study's images get its logits, hence bit-identical probabilities)."""
    return dict(val_figures(logits, y, names, task, expand), idx=np.arange(len(y)))


def _plot_tau(log: pd.DataFrame, tau: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for col in [c for c in ("train_macro_f1", "val_macro_f1", "train_bAcc", "val_bAcc", "val_mAP") if c in log]:
        ax.plot(log["tau"], log[col], marker="o", label=col)
    ax.axvline(tau, color="grey", ls="--", label=f"picked tau={tau:g}")
    ax.set_xlabel("tau")
    ax.set_title(title)
    ax.legend()
    save_figure(path, fig)
    plt.close(fig)

