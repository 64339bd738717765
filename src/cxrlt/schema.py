"""The recipe schema: every key a recipe may set, with its type, range or choices, default and a
one-line doc. It is the one source of truth: `config.load_config` validates every recipe against
it (an unknown key, a wrong type, a value out of range or a choice typo stops at load with one line
naming the key), the defaults are read from it, and docs/configuration.md is generated from it
(`python -m cxrlt.schema > docs/configuration.md`; a test keeps the two equal).

Why pydantic v2 (and not OmegaConf structured configs): `extra="forbid"` models give nested
unknown-key refusal, `Literal` choices, per-field validators for our one-line messages and the
field docs in one place; pydantic is already installed with the web page, where OmegaConf would be
a new dependency with its own interpolation syntax our recipes do not use.

Numbers keep the type they were written with (10 stays 10, 10.0 stays 10.0) so that a recipe
resolves to exactly the values it did before the schema existed; whole-number keys turn 3.0 into 3.
"""
from __future__ import annotations

import math
import sys
from typing import Annotated, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from cxrlt.choices import (  # noqa: F401 (re-exported: schema.PRESETS etc.)
    PRESETS,
    TASKS,
    EXTRA_PRESETS,
    EXTRA_UNCERTAIN,
    EXTRA_BLANK,
    EXTRA_RATERS,
    RESIZE_MODES,
    CACHE_FORMATS,
    FOLD_SCHEMES,
    PRETRAINED_FORMATS,
    HEADS,
    CLASS_QUERIES,
    LOSSES,
    CLASS_WEIGHTS,
    MOSAIC_VARIANTS,
    MIX_LABELS,
    PRECISIONS,
    SAMPLERS,
    OPTIMIZERS,
    SCHEDULERS,
    TRACKERS,
    STAGE2_METHODS,
    CACHE_DTYPES,
    TTA_MEANS,
    OOF_NORMALISE,
    USE_FULL_FIT,
    BLEND_MODES,
    CALIBRATIONS,
    PLATFORMS,
    TTA_VIEW,
)


# ---------------------------------------------------------------- field types
def _fail(text: str, style: str = "value"):
    """A validation failure carrying our message; `style` value -> `key=value: text`,
    choice -> `key text`, key -> `key: text` (see config.format_error)."""
    return PydanticCustomError("cxrlt", "{text}", {"text": text, "style": style})


def _range_text(lo, hi, lo_open, hi_open) -> str:
    parts = ([f"{'>' if lo_open else '>='} {lo}"] if lo is not None else []) + \
            ([f"{'<' if hi_open else '<='} {hi}"] if hi is not None else [])
    return " and ".join(parts)


def Num(lo=None, hi=None, *, lo_open=False, hi_open=False, whole=False, null=False):
    """A number (a whole number with whole=True) in [lo, hi] (open ends with lo_open / hi_open);
    null=True also takes null. Booleans, strings, NaN and infinities are refused."""
    def check(v):
        if v is None and null:
            return None
        kind = "a whole number" if whole else "a number"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _fail(f"must be {kind}" + (" or null" if null else ""))
        if not math.isfinite(v):
            raise _fail(f"must be a finite {kind[2:]}")
        if whole:
            if float(v) != int(v):
                raise _fail("must be a whole number")
            v = int(v)
        if (lo is not None and (v < lo or (v == lo and lo_open))) or \
                (hi is not None and (v > hi or (v == hi and hi_open))):
            raise _fail(f"must be {_range_text(lo, hi, lo_open, hi_open)}")
        return v
    base = int if whole else Union[int, float]
    meta = dict(kind="int" if whole else "number", range=_range_text(lo, hi, lo_open, hi_open))
    return Annotated[Union[base, None] if null else base, BeforeValidator(check), Field(json_schema_extra=meta)]


def Choice(*options, null=False, false=None):
    """One of `options` (null too with null=True); a typo gets the choices and a suggestion.
    `false`: the option a YAML `no`/`off` (read as false) stands for, e.g. precision `no`."""
    def check(v):
        if v is False and false is not None:
            return false
        if (v is None and null) or (isinstance(v, str) and v in options):
            return v
        import difflib

        near = difflib.get_close_matches(str(v), options, n=1) if isinstance(v, str) else []
        listed = ", ".join(options) + (" or null" if null else "")
        if isinstance(v, bool):   # YAML reads yes/no/on/off as booleans
            raise _fail(f"must be one of {listed}, not {str(v).lower()} (yes/no/on/off read as true/false)", "choice")
        raise _fail(f"must be one of {listed}, not '{v}'" + (f"; did you mean {near[0]}?" if near else ""), "choice")
    lit = Literal[options]  # type: ignore[valid-type]
    return Annotated[Union[lit, None] if null else lit, BeforeValidator(check),
                     Field(json_schema_extra=dict(kind="choice", choices=list(options) + (["null"] if null else [])))]


def _bool(v):
    if not isinstance(v, bool):
        raise _fail("must be true or false")
    return v


def _text(null: bool):
    def check(v):
        if (v is None and null) or isinstance(v, str):
            return v
        raise _fail("must be a text" + (" or null" if null else ""))
    return check


Bool = Annotated[bool, BeforeValidator(_bool), Field(json_schema_extra=dict(kind="bool"))]
Str = Annotated[str, BeforeValidator(_text(False)), Field(json_schema_extra=dict(kind="text"))]
OptStr = Annotated[Union[str, None], BeforeValidator(_text(True)), Field(json_schema_extra=dict(kind="text"))]
Texts = list[Str]


def _pair(v):
    if not (isinstance(v, (list, tuple)) and len(v) == 2):
        raise _fail("must be a list of two numbers [low, high]")
    if not v[0] <= v[1]:
        raise _fail("must be [low, high] with low <= high")
    return list(v)


def _tta(v):
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, (list, tuple)):
        raise _fail("must be none, hflip or a list of views")
    for it in items:
        m = TTA_VIEW.match(it) if isinstance(it, str) else None
        if not (it in ("none", "hflip") or (m and (m[1] == "rotate" or float(m[2]) > 0))):
            raise _fail(f"unknown view '{it}' in {v!r}; views are none, hflip, scale_<factor> (e.g. scale_0.9, "
                        f"scale_1.1) and rotate_<degrees> (e.g. rotate_5, rotate_-5)", "key")
    return v


def D(default, doc: str, kind: str | None = None):
    """A field's default and its one-line doc (`kind`: how the docs name a composite type)."""
    extra = {"json_schema_extra": dict(kind=kind)} if kind else {}   # else the type's own kind
    return Field(default=default, description=doc, **extra)


Prob = Num(0, 1)
PosInt = Num(1, whole=True)
Count = Num(0, whole=True)
Seed = Num(0, whole=True)
Pair = Annotated[list[Union[int, float]], BeforeValidator(_pair)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# ---------------------------------------------------------------- the recipe
class ExtraSet(Section):
    """One external labelled set of data.extra (docs/external_data.md): training-only rows."""
    preset: Choice(*EXTRA_PRESETS) = D("custom", "nih14 (ChestX-ray14 Data_Entry_2017_v2020.csv) | chexpert (train.csv) | padchest (PADCHEST_..._labels_160K_01.02.19.csv) | vindr (VinDr-CXR annotations/image_labels_train.csv) | custom (name the columns below)")
    name: OptStr = D(None, "the set's name: its ids become extra:<name>:<id>, its cache <cache.dir>/extra/<name>/; null = the preset's")
    dir: OptStr = D(None, "folder of the label file, relative to data.input_dir; null = the preset's (nih-chestxray14, chexpert, padchest, vindr-cxr)")
    csv: OptStr = D(None, "the label file, in dir; null = the preset's")
    image_root: OptStr = D(None, "image paths are relative to this folder (relative to data.input_dir); null = the preset's, else dir")
    id_col: OptStr = D(None, "image id column; null = the preset's")
    path_col: OptStr = D(None, "image path column; null = the preset's (custom: id_col)")
    patient_col: OptStr = D(None, "patient column; null = the preset's (custom: each image its own patient)")
    view_col: OptStr = D(None, "view column; null = the preset's (none for vindr)")
    labels: Union[Texts, None] = D(None, "custom: the label columns (cells 1, 0, -1 or empty); null = the preset's format", kind="list of texts or null")
    map: dict[str, OptStr] = D({}, "their label -> the competition's (over the preset's own map and the name / alias match); null drops a label", kind="mapping of text to text or null")
    uncertain: Choice(*EXTRA_UNCERTAIN) = D("ignore", "a -1 (uncertain) cell: ignore (unlabelled, left out of the loss) | ones | zeros")
    blank: Choice(*EXTRA_BLANK) = D("negative", "an empty cell of a label column: negative (CheXpert's 'not mentioned') | ignore (unlabelled)")
    raters: Choice(*EXTRA_RATERS) = D("majority", "vindr (several radiologists per image): majority (> half) | any | mean (the share of readers, a soft target)")
    views: Union[Texts, None] = D(None, "keep only these views, e.g. [PA, AP] (frontal films); null = all", kind="list of texts or null")


class Data(Section):
    preset: Choice(*PRESETS) = D("demo", "the dataset: a CXR-LT release, a single-label benchmark set, the demo, or custom (name every field below)")
    input_dir: Str = D("input", "where the presets look for their files (relative to the project root)")
    name: OptStr = D(None, "dataset name used for folds/<name>_folds.csv and the cache folder; null = the preset's")
    dir: OptStr = D(None, "folder holding the CSVs, relative to data.input_dir; null = the preset's")
    image_root: OptStr = D(None, "image paths in the CSVs are relative to this folder (relative to data.input_dir); null = data.dir")
    train_csv: OptStr = D(None, "training CSV file name (in data.dir)")
    val_csv: OptStr = D(None, "folds.scheme=given: the held-out CSV that picks the epoch (the benchmark's balanced-val)")
    dev_csv: OptStr = D(None, "labelled, never fitted on, scored apart (the benchmark's balanced-test)")
    test_csv: OptStr = D(None, "the CSV of the images to submit predictions for")
    sample_submission: OptStr = D(None, "the release's sample submission, if any")
    id_col: OptStr = D(None, "image id column")
    path_col: OptStr = D(None, "image path column")
    patient_col: OptStr = D(None, "patient column (folds and bootstraps group by it)")
    study_col: OptStr = D(None, "study column (study aggregation, fusion)")
    view_col: OptStr = D(None, "view position column (PA, AP, LATERAL, ...)")
    labels: Union[Texts, None] = D(None, "label columns, in submission order; null = the preset's", kind="list of texts or null")
    normal_label: OptStr = D(None, "the 'no finding' class, if any")
    normal_allows: Union[Texts, None] = D(None, "labels that may be positive together with normal_label", kind="list of texts or null")
    label_map: Union[dict[Union[str, int, float], Num(0, 1, whole=True)], None] = D(None, "raw cell values mapped to 0/1, e.g. {'-1': 0, '': 0} for uncertain labels", kind="mapping of cell value to 0 or 1, or null")
    task: Choice(*TASKS, null=True) = D(None, "multilabel (sigmoid per class) | multiclass (one label per image, softmax); null = the preset's")
    group_counts: Union[list[Num(0, whole=True)], None] = D(None, "multiclass head/medium/tail rule: [tail below, head above] training images per class; null = [100, 1000] (the demo preset scales it)", kind="two whole numbers or null")
    views: Union[Texts, None] = D(None, "train on these views only, e.g. [PA, AP] (a per-view specialist; same folds); null = all", kind="list of texts or null")
    holdout_labels: Texts = D([], "labels left out of training (columns kept): stage 04 scores them zero-shot beside chance", kind="list of texts")
    zero_shot_labels: Union[Texts, None] = D(None, "labels with no training column, scored zero-shot (a preset's: cxr-lt-2024-task3, cxr-lt-2026-task2)", kind="list of texts or null")
    allow_outside_root: Bool = D(False, "let image paths in the CSVs lead outside data.image_root (`..` steps, absolute paths); false: such a path stops stage 01 naming its row")
    submission_labels: Union[Texts, None] = D(None, "the submission's label columns, in order; null = data.labels (zero-shot presets: their findings)", kind="list of texts or null")
    extra: list[ExtraSet] = D([], "external labelled sets, training-only rows of every fold (never in OOF, blends or thresholds); a finding a set does not label is left out of the loss for its images; keys below", kind="list of external sets")


class Cache(Section):
    size: Num(8, whole=True) = D(768, "cached images are size x size, 8-bit gray")
    resize: Choice(*RESIZE_MODES) = D("stretch", "stretch (the whole film fills the square) | pad (keep aspect, pad with black)")
    format: Choice(*CACHE_FORMATS) = D("png", "png (lossless) | jpg (quality 95, faster to decode)")
    dir: Str = D("input/cache", "caches live in <dir>/<dataset>/<size>_<resize>_<format>/")
    workers: Count = D(0, "decoding processes; 0: one per CPU core")
    max_image_pixels: Count = D(200000000, "a bigger film is refused (decompression-bomb guard); raise it for giant films")


class Folds(Section):
    scheme: Choice(*FOLD_SCHEMES) = D("kfold", "kfold (patient-grouped, multilabel-stratified K folds) | given (train on the training CSV, pick the epoch on data.val_csv)")
    k: Num(2, whole=True) = D(5, "number of folds")
    seed: Seed = D(42, "seed of the fold assignment")
    dir: Str = D("folds", "where folds/<dataset>_folds.csv is written")


class Model(Section):
    name: Str = D("tf_efficientnetv2_s", "any timm model name")
    pretrained: Bool = D(True, "download ImageNet weights (needs internet once; cached by huggingface_hub)")
    pretrained_path: OptStr = D(None, "or a local weights file (.pth/.safetensors) for this architecture")
    pretrained_format: Choice(*PRETRAINED_FORMATS) = D("timm", "timm | torchxrayvision (a TorchXRayVision DenseNet-121 file) | hf-dinov2 (a Dinov2Model folder, e.g. RAD-DINO)")
    require_pretrained: Bool = D(False, "true: stop with an error instead of training from random init")
    init_from: OptStr = D(None, "an experiment (its full-data fit, else fold 0) or a .pt file: start from its backbone and same-named classifier rows")
    in_chans: PosInt = D(1, "input channels; gray films: timm folds the pretrained RGB stem into one")
    drop_rate: Num(0, 1, hi_open=True) = D(0.2, "dropout before the classifier")
    drop_path_rate: Num(0, 1, hi_open=True) = D(0.1, "stochastic depth (0 for models without it)")
    head: Choice(*HEADS) = D("linear", "linear (timm's pooled classifier) | ml_decoder (class queries cross-attending to the feature map) | csra (class-specific residual attention)")
    decoder_dim: PosInt = D(768, "ml_decoder: width of the class queries")
    decoder_heads: PosInt = D(8, "ml_decoder: attention heads")
    decoder_layers: PosInt = D(1, "ml_decoder: decoder layers (the paper uses 1)")
    class_queries: Choice(*CLASS_QUERIES) = D("learned", "ml_decoder: learned (a trained query per class) | text (a trained projection of frozen label embeddings; unseen labels score zero-shot)")
    text_encoder: OptStr = D(None, "class_queries text: a Hugging Face model name (needs the hub or its cache) or a local folder")
    prompt: Str = D("chest x-ray showing {label}", "class_queries text: the sentence each label is encoded from ({label} = its name)")
    csra_lambda: Num(0) = D(0.1, "csra: weight of the attention logit")
    csra_temperatures: list[Num(0, lo_open=True)] = D([1], "csra: one head per temperature T (99 = max pooling); the paper's 6 heads: [1, 2, 3, 4, 5, 99]", kind="list of numbers > 0")


class Loss(Section):
    name: Choice(*LOSSES) = D("focal", "multilabel: focal | bce | weighted_bce | asl | ldam | db | ral; multiclass (softmax forms): ce | focal | ldam")
    alpha: Num(null=True) = D(0.25, "focal: weight of positives (null or < 0: none)")
    gamma: Num(0) = D(2.0, "focal: focusing exponent")
    label_smoothing: Num(0, 1, hi_open=True) = D(0.01, "focal, bce, weighted_bce, asl")
    class_weights: Choice(*CLASS_WEIGHTS, null=True) = D(None, "per-class weights from training positives (mean 1): cb = class-balanced (Cui 2019), rw = n / (C n_c)")
    cb_beta: Num(0, 1, hi_open=True) = D(0.9999, "class_weights cb: beta of the effective number of samples")
    drw_epoch: Count = D(0, "deferred re-weighting (Cao 2019): class weights apply from this epoch (0-based) on")
    ldam_max_m: Num(0) = D(0.5, "ldam: margin of the rarest class; m_c proportional to n_c^(-1/4)")
    ldam_s: Num(0, lo_open=True) = D(30.0, "ldam: logit scale")
    max_pos_weight: Num(0, lo_open=True) = D(50, "weighted_bce: cap of the negative/positive ratio")
    gamma_neg: Num(0) = D(4, "asl: focusing exponent of negatives")
    gamma_pos: Num(0) = D(1, "asl: focusing exponent of positives")
    clip: Num(0, 1, hi_open=True) = D(0.05, "asl: probability margin of negatives")
    db_alpha: Num() = D(0.1, "db (Wu 2020): re-balancing weight floor: r_hat = alpha + sigmoid(beta (r - mu))")
    db_beta: Num() = D(10.0, "db: steepness of that sigmoid")
    db_mu: Num() = D(0.2, "db: its centre (official COCO-MLT config; VOC-MLT: 0.3)")
    db_lambda: Num(0, lo_open=True) = D(2.0, "db: negative-tolerant scale of negative logits (COCO-MLT; VOC-MLT: 5)")
    db_kappa: Num() = D(0.05, "db: scale of the class-prior logit bias -log(1/p_i - 1)")
    db_focal_gamma: Num(0) = D(2.0, "db: DB-Focal (the paper's best): x 2 (1 - p_t)^gamma; 0 = plain DB")
    ral_gamma_pos: Num(0) = D(0, "ral (Park 2023): focusing exponent of positives")
    ral_gamma_neg: Num(0) = D(4, "ral: focusing exponent of negatives")
    ral_clip: Num(0, 1, hi_open=True) = D(0.05, "ral: probability margin of negatives, p_m = max(p - clip, 0)")
    ral_lambda: Num(1) = D(1.5, "ral: Hill factor (lambda - p) p^2 on negatives")
    ral_eps1: Num() = D(1.0, "ral: coefficient of (1 - p) in the positive polynomial")
    ral_eps2: Num() = D(-2.5, "ral: coefficient of (1 - p)^2 / 2 in the positive polynomial")


class Augment(Section):
    hflip: Prob = D(0.5, "probability of a horizontal flip")
    affine: Prob = D(0.7, "probability of scale / shift / rotate")
    scale: Pair = D([0.9, 1.1], "affine: scale range", kind="two numbers [low, high]")
    translate: Num(0, 1) = D(0.06, "affine: shift, fraction of the side")
    rotate: Num(0) = D(10, "affine: degrees")
    brightness_contrast: Prob = D(0.5, "probability of a brightness / contrast change")
    brightness: Num(0) = D(0.15, "its brightness limit")
    contrast: Num(0) = D(0.15, "its contrast limit")
    dropout: Prob = D(0.3, "probability of CoarseDropout (CutOut)")
    dropout_holes: Pair = D([1, 6], "CoarseDropout: number of holes range", kind="two whole numbers [low, high]")
    dropout_size: Pair = D([0.03, 0.12], "CoarseDropout: hole size range, fraction of the side", kind="two numbers [low, high]")
    mosaic: Prob = D(0.5, "probability of a 4-image mosaic, labels = union (normal class only if nothing else shows)")
    mosaic_variants: list[Choice(*MOSAIC_VARIANTS)] = D(["crop", "resize"], "random centre with crops | each image resized into a quadrant", kind="list of `crop`, `resize`")
    mosaic_min_visible: Prob = D(0.0, "a tile covering no more than this fraction of the canvas gives no labels")
    mosaic_off_last_epochs: Count = D(0, "no mosaic in the last N epochs")
    mixup: Prob = D(0.0, "probability of MixUp")
    mixup_alpha: Num(0, lo_open=True) = D(0.4, "MixUp: lambda ~ Beta(alpha, alpha)")
    balanced_mixup: Prob = D(0.0, "probability of Balanced-MixUp (Galdran 2021): mix with a class-aware-sampled partner")
    balanced_mixup_alpha: Num(0, lo_open=True) = D(0.2, "lambda ~ Beta(alpha, 1) is the share of the instance-sampled image")
    mix_labels: Choice(*MIX_LABELS) = D("union", "labels of every mix: union (clip of the sum, normal-class rule) | linear (pixel-share weighted)")
    cutmix: Prob = D(0.0, "probability of CutMix")


class Pseudo(Section):
    """train.pseudo: a teacher's soft targets (docs/external_data.md)."""
    from_: OptStr = Field(default=None, alias="from", description="the teacher: a finished experiment (name or folder) trained on the student's folds; null = no pseudo-labels, no distillation")
    splits: list[Choice("test", "dev")] = D(["test"], "films pseudo-labelled by the teacher and trained on by every fold (never scored out of fold): test | dev", kind="list of `test`, `dev`")
    folder: OptStr = D(None, "a folder of unlabelled films (relative to data.input_dir; every .png/.jpg/.jpeg/.dcm/.dicom under it), pseudo-labelled and trained on by every fold; null = none")
    weight: Num(0) = D(1.0, "loss weight of a pseudo-labelled film against a labelled one")
    temperature: Num(0, lo_open=True) = D(1.0, "soft target = sigmoid(teacher logit / temperature)")
    distill: Prob = D(0.0, "distillation: a training film's target = (1 - distill) * its label + distill * the teacher's soft target; 0 = labels only")


class Train(Section):
    epochs: PosInt = D(20, "training epochs")
    batch_size: PosInt = D(16, "per process")
    val_batch_size: PosInt = D(64, "validation batch size")
    lr: Num(0, lo_open=True) = D(1.0e-4, "peak learning rate")
    weight_decay: Num(0) = D(0.01, "weight decay (none on biases and normalisation weights)")
    optimizer: Choice(*OPTIMIZERS) = D("adamw", "timm optimizer (create_optimizer_v2), for first and second stages")
    momentum: Num(0, 1, hi_open=True) = D(0.9, "momentum of sgd, momentum, rmsproptf, lars")
    scheduler: Choice(*SCHEDULERS) = D("cosine", "lr per update: cosine (linear warmup, cosine to lr * min_lr_ratio) | tanh | poly | wsd | constant (timm's create_scheduler_v2, warmup from lr * min_lr_ratio)")
    warmup_epochs: Num(0) = D(1.0, "linear warmup, in epochs")
    min_lr_ratio: Prob = D(0.01, "the schedule decays to lr * min_lr_ratio")
    grad_clip: Num(0) = D(1.0, "max gradient norm; 0 disables")
    grad_accum: PosInt = D(1, "gradient accumulation steps")
    precision: Choice(*PRECISIONS, false="no") = D("bf16", "no | fp16 | bf16 (CPU runs use fp32)")
    channels_last: Bool = D(True, "channels_last memory format end to end")
    compile: Bool = D(False, "torch.compile the model")
    ema: Bool = D(True, "validate and keep best.pt with an EMA of the weights")
    ema_decay: Num(0, 1, hi_open=True) = D(0.999, "EMA decay per step")
    sampler: Choice(*SAMPLERS) = D("random", "random | class_aware (repeat factors of rare classes) | class_balanced (1 / n_c per image, Kang 2020)")
    class_aware_t: Num(0, 1, lo_open=True) = D(0.05, "class_aware: classes rarer than this fraction are repeated sqrt(t / f) times")
    class_aware_cap: Num(1) = D(4.0, "class_aware: cap of the repeat factor")
    workers: Count = D(8, "data loader processes per training process")
    folds: Union[list[Count], None] = D(None, "folds to train when --fold is not given; null = all", kind="list of fold numbers or null")
    log_every: PosInt = D(50, "steps between progress-bar loss updates (each one syncs the device)")
    trackers: list[Choice(*TRACKERS)] = D(["tensorboard"], "experiment tracking: tensorboard (fold<k>/tb/), wandb, mlflow; [] = none", kind="list of `tensorboard`, `wandb`, `mlflow`")
    max_steps_per_epoch: Num(1, whole=True, null=True) = D(None, "cap, for smoke tests and benchmarks")
    patience: Num(1, whole=True, null=True) = D(None, "early stopping: stop when the validation score has not improved for this many epochs")
    full_fit: Bool = D(False, "also train one model on every training image (03_train.py --full does only that)")
    full_epochs: Num(1, whole=True, null=True) = D(None, "its epochs; null = the median best epoch of the folds (needs them finished)")
    pseudo: Pseudo = D(Pseudo(), "pseudo-labels and distillation from a teacher's fold-k model (keys below)")


class Stage2(Section):
    from_: OptStr = Field(default=None, alias="from", description="the first stage's experiment name; null = this recipe is a first stage")
    method: Choice(*STAGE2_METHODS) = D("crt", "crt (re-train the classifier; Kang 2020) | tau_norm (w_c / |w_c|^tau) | fusion (CheXFusion: a transformer over a study's views)")
    epochs: PosInt = D(10, "crt, fusion: epochs")
    batch_size: PosInt = D(128, "crt: images, fusion: studies per step")
    lr: Num(0, lo_open=True) = D(1.0e-3, "learning rate")
    weight_decay: Num(0) = D(1.0e-4, "weight decay")
    sampler: Choice(*SAMPLERS) = D("class_aware", "crt: class_aware (train.class_aware_t/cap) | class_balanced | random")
    tau_grid: list[Num(0)] = D([0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0], "tau_norm: candidates", kind="list of numbers >= 0")
    max_views: PosInt = D(4, "fusion: images per study (more are subsampled in training, cut at prediction)")
    dim: PosInt = D(256, "fusion: width of the transformer")
    layers: PosInt = D(2, "fusion: transformer encoder layers")
    heads: PosInt = D(8, "fusion: attention heads (encoder and ML-Decoder)")
    grid: PosInt = D(4, "fusion: each view's feature map average-pooled to grid x grid tokens")
    cache_dtype: Choice(*CACHE_DTYPES) = D("float16", "feature cache: float16 | float32")
    batch_features: PosInt = D(64, "images per forward pass when filling the feature cache")
    workers: Count = D(2, "loader processes for the feature cache and the fusion prediction")

    model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True)


class Predict(Section):
    tta: Annotated[Union[str, list[str]], BeforeValidator(_tta)] = D("hflip", "none | hflip | a list of views besides the original, e.g. [hflip, scale_0.9, rotate_5]", kind="`none` \\| `hflip` \\| list of views")
    tta_mean: Choice(*TTA_MEANS) = D("prob", "over the views: mean of probabilities (prob), of logits (logit), or geometric mean of probabilities (gmean)")
    normal_gating: Num(0, null=True) = D(None, "null | alpha: findings' probabilities times (1 - p_normal)^alpha")
    batch_size: PosInt = D(64, "per process")
    workers: Count = D(8, "loader processes")
    precision: Choice(*PRECISIONS, false="no") = D("bf16", "no | fp16 | bf16 (CPU runs use fp32)")
    study_aggregation: Bool = D(True, "every image of a study gets the study's view-weighted mean (if there is a study column)")
    view_weights: dict[str, Num(0)] = D({"PA": 7, "AP": 7, "LATERAL": 3, "LL": 3}, "weights of views in the study mean (add views with +predict.view_weights.<VIEW>=w)", kind="mapping of view to number >= 0")
    other_view_weight: Num(0) = D(5, "weight of any other view")
    oof_normalise: Choice(*OOF_NORMALISE) = D("none", "none | rank | logit_standardise: per fold model and class, a monotone map fitted on its own OOF scores (never labels)")
    use_full_fit: Choice(*USE_FULL_FIT) = D("none", "none | with_folds (one more member of the test/dev mean) | alone: the full-data fit's test/dev predictions")
    zero_shot_labels: Texts = D([], "labels never trained on, scored from their text embeddings alone (model.class_queries: text)", kind="list of texts")
    bootstrap: Count = D(200, "metrics.json: paired patient-bootstrap resamples of each variant against the final one; 0: off")


class Blend(Section):
    members: Texts = D([], "experiment names (experiments/<name>/) or experiment folders", kind="list of texts")
    mode: Choice(*BLEND_MODES) = D("fit", "mean | rank | fit (non-negative weights summing to 1, maximising OOF mAP) | route (per-view specialists)")
    fit_steps: PosInt = D(40, "ensemble-selection steps: weights are multiples of 1/fit_steps")


class Thresholds(Section):
    calibration: Choice(*CALIBRATIONS) = D("none", "none | temperature | isotonic: per-class calibrators fitted on OOF")


class Submission(Section):
    dir: Str = D("submissions", "where submissions are written")
    name: OptStr = D(None, "file name without extension; null = the experiment name")
    inner_name: OptStr = D(None, "name of the CSV inside the zip; null = <name>.csv")


class Submit(Section):
    platform: Choice(*PLATFORMS, null=True) = D(None, "codabench | codalab (CodaLab Competitions v1); null = the preset's (cxr-lt-2023/2024: codalab, cxr-lt-2026: codabench)")
    url: OptStr = D(None, "the platform's address; null = the preset's (https://codalab.lisn.upsaclay.fr, https://www.codabench.org)")
    competition: Num(1, whole=True, null=True) = D(None, "competition id (codalab: in every call; codabench: shown only); null = the preset's")
    phase: Num(1, whole=True, null=True) = D(None, "the phase id to submit to; it changes per phase, so the recipe or the command line names it")
    tasks: list[PosInt] = D([], "codabench: the phase's task ids to run; [] = all of them", kind="list of whole numbers >= 1")
    score_key: OptStr = D(None, "the leaderboard column logged as lb_score (codabench column key); null = the first column")
    poll_seconds: Num(0) = D(30, "seconds between two polls of a sent submission's status")
    wait_minutes: Num(0) = D(60, "stop polling after this long; the upload stays resumable with --status")
    retries: Count = D(4, "a network failure or a 5xx answer is retried this many times (backoff 1, 2, 4 ... s)")


class Compare(Section):
    dir: Str = D("experiments", "outputs go to <dir>/compare_<name>/: table.md, table.csv, mAP_by_group.png")
    bootstrap: Count = D(1000, "paired bootstrap over patients against the baseline; 0: off")
    seed: Seed = D(0, "of the bootstrap resamples")


class Recipe(Section):
    name: OptStr = D(None, "experiment name; null = the recipe's file name without .yaml")
    seed: Seed = D(42, "seed of training")
    output_dir: OptStr = D(None, "where the experiment's outputs go; null = experiments/<name>")
    data: Data = D(Data(), "the dataset")
    cache: Cache = D(Cache(), "stage 01: the image cache")
    folds: Folds = D(Folds(), "stage 02: folds")
    model: Model = D(Model(), "the network")
    loss: Loss = D(Loss(), "the training loss")
    augment: Augment = D(Augment(), "training augmentation (probabilities; 0 switches an operation off)")
    train: Train = D(Train(), "stage 03: training")
    stage2: Stage2 = D(Stage2(), "a second stage over the frozen fold-k backbones of a first-stage experiment")
    predict: Predict = D(Predict(), "stage 04: prediction")
    blend: Blend = D(Blend(), "stage 05: a blend recipe lists member experiments")
    thresholds: Thresholds = D(Thresholds(), "stage 06: thresholds and calibration")
    submission: Submission = D(Submission(), "stage 07: the submission file")
    submit: Submit = D(Submit(), "stage 07 --upload: the leaderboard the file goes to (credentials: environment or ~/.netrc only)")
    compare: Compare = D(Compare(), "stage 08, read from the first compared recipe")


# Keys that were renamed or replaced: what to write instead.
REPLACED = {"thresholds.temperature": "thresholds.calibration: none | temperature | isotonic"}

# Mappings whose keys are the user's: `+predict.view_weights.XX=3` adds one.
OPEN_MAPPINGS = {"predict.view_weights", "data.label_map"}


def defaults() -> dict:
    """Every key with its default, as a nested dict (what defaults.yaml was)."""
    return Recipe().model_dump(by_alias=True)


# the model keys each head reads: set to anything but its default, a key of another head is refused
HEAD_KEYS = {"ml_decoder": ("decoder_dim", "decoder_heads", "decoder_layers", "class_queries", "text_encoder", "prompt"),
             "csra": ("csra_lambda", "csra_temperatures")}


def with_defaults(section: str, values: dict) -> dict:
    """A section as saved by an earlier run (a checkpoint's model record): the keys it lacks take
    today's defaults, its own (and any extra it records, e.g. text_dim) are kept."""
    return {**defaults()[section], **values}


def head_rules(m: dict) -> str | None:
    base = defaults()["model"]
    for other, keys in HEAD_KEYS.items():
        for k in keys:
            if other != m["head"] and m[k] != base[k]:
                return (f"model.{k}={m[k]!r} is read by model.head={other} only, not by model.head={m['head']}; "
                        f"remove it or set model.head={other}")
    if m["head"] == "ml_decoder" and m["class_queries"] == "text" and not m["text_encoder"] and not m.get("text_dim"):
        return "model.class_queries=text needs model.text_encoder (a Hugging Face model name or a local folder)"
    return None


def cross_checks(cfg: dict) -> str | None:
    """Rules between keys, checked at load: the message of the first one broken, or None."""
    p, s2, tr = cfg["predict"], cfg["stage2"], cfg["train"]
    if p["use_full_fit"] != "none" and p["oof_normalise"] != "none":
        return (f"predict.use_full_fit={p['use_full_fit']} with predict.oof_normalise={p['oof_normalise']}: the "
                f"full-data fit has no OOF scores to fit its normalisation on; set one of them to none")
    if s2["from"] and p["use_full_fit"] != "none":
        return f"predict.use_full_fit={p['use_full_fit']}: a second stage has no full-data fit; set it to none"
    ps = tr["pseudo"]
    if ps["from"] and not ps["splits"] and not ps["folder"] and not ps["distill"]:
        return ("train.pseudo.from is set, but train.pseudo.splits is empty, train.pseudo.folder null and "
                "train.pseudo.distill 0: nothing to take from the teacher")
    if ps["folder"] and not ps["from"]:
        return "train.pseudo.folder: its films are labelled by a teacher; set train.pseudo.from"
    if ps["from"] and tr["full_fit"]:
        return "train.pseudo with train.full_fit: the teacher's targets come from its fold-k models; a full-data fit has none"
    if ps["from"] and s2["from"]:
        return "train.pseudo: a second stage trains over its first stage's features; give the first stage the teacher"
    if ps["from"] and cfg["data"]["task"] == "multiclass":
        return "train.pseudo: soft targets are per-finding probabilities (multilabel); data.task is multiclass"
    if s2["from"] and tr["full_fit"]:
        return "train.full_fit=true: a second stage has no full-data fit; set it to false"
    if tr["folds"] is not None and cfg["folds"]["scheme"] == "kfold" and any(f >= cfg["folds"]["k"] for f in tr["folds"]):
        return f"train.folds={tr['folds']}: folds are 0..{cfg['folds']['k'] - 1} (folds.k={cfg['folds']['k']})"
    if cfg["model"]["head"] == "ml_decoder" and cfg["model"]["decoder_dim"] % cfg["model"]["decoder_heads"]:
        return (f"model.decoder_dim={cfg['model']['decoder_dim']} must be a multiple of "
                f"model.decoder_heads={cfg['model']['decoder_heads']}")
    if "{label}" not in cfg["model"]["prompt"]:
        return f"model.prompt must be a text with {{label}} where the class name goes, not {cfg['model']['prompt']!r}"
    return head_rules(cfg["model"])


# ---------------------------------------------------------------- docs/configuration.md
def _type_text(info) -> str:
    extra = {}
    for m in info.metadata:
        if getattr(m, "json_schema_extra", None):
            extra.update(m.json_schema_extra)
    extra.update(info.json_schema_extra or {})
    kind = extra.get("kind")
    if kind == "choice":
        return " \\| ".join(f"`{c}`" for c in extra["choices"])
    if kind in ("int", "number"):
        word = "whole number" if kind == "int" else "number"
        return f"{word} {extra['range']}".strip()
    if not kind:
        raise TypeError(f"schema field {info.description!r}: give its kind for the docs")
    return kind


def _fmt(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    """docs/configuration.md: every key, its type / range / choices, default and doc."""
    lines = ["# Configuration", "",
             "<!-- generated by `python -m cxrlt.schema > docs/configuration.md` from src/cxrlt/schema.py; "
             "do not edit by hand -->", "",
             "A recipe (`experiments/<name>.yaml`) sets only what differs from these defaults; `base: other.yaml` "
             "inherits another recipe; `key.sub=value` on the command line overrides any key "
             "(`+predict.view_weights.<VIEW>=w` adds a view weight). Every value is checked when the recipe is "
             "loaded: an unknown key, a wrong type, a number out of range or a choice typo stops the stage at once "
             "with one line naming the key. Every run writes its resolved recipe beside its outputs.", ""]
    top = [(n, f) for n, f in Recipe.model_fields.items() if not isinstance(f.default, BaseModel)]
    lines += ["## top level", "", "| key | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{n}` | {_type_text(f)} | `{_fmt(f.default)}` | {_cell(f.description)} |" for n, f in top]
    for sec, f in Recipe.model_fields.items():
        if not isinstance(f.default, BaseModel):
            continue
        lines += ["", f"## {sec}", "", f"{f.description[0].upper()}{f.description[1:]}.", "",
                  "| key | type | default | meaning |", "|---|---|---|---|"]
        subs = []
        for n, g in type(f.default).model_fields.items():
            key = g.alias or n
            if isinstance(g.default, BaseModel):        # a section inside the section: its keys, dotted
                lines += [f"| `{sec}.{key}.{h.alias or m}` | {_type_text(h)} | `{_fmt(h.default)}` | {_cell(h.description)} |"
                          for m, h in type(g.default).model_fields.items()]
                continue
            lines.append(f"| `{sec}.{key}` | {_type_text(g)} | `{_fmt(g.default)}` | {_cell(g.description)} |")
            item = getattr(g.annotation, "__args__", (None,))[0]
            if isinstance(item, type) and issubclass(item, BaseModel):     # a list of entries: their keys below
                subs.append((f"{sec}.{key}", item))
        for where, model in subs:
            lines += ["", f"### {where} entries", "", f"{model.__doc__.strip()}", "",
                      "| key | type | default | meaning |", "|---|---|---|---|"]
            lines += [f"| `{n}` | {_type_text(g)} | `{_fmt(g.default)}` | {_cell(g.description)} |"
                      for n, g in model.model_fields.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
