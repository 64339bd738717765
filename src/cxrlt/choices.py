"""The choices of the recipe's keys, in one place: the schema (schema.py) validates recipes with
them and the modules that read a key check against the same tuple. No imports beyond `re`, so a
module that runs in a worker process (the image cache, the loader) pays nothing for it."""
import re

PRESETS = ("cxr-lt-2023", "cxr-lt-2024-task1", "cxr-lt-2024-task2", "cxr-lt-2024-task3", "cxr-lt-2026",
           "cxr-lt-2026-task2", "demo", "nih-cxr-lt", "mimic-cxr-lt", "demo-single-label", "custom")
TASKS = ("multilabel", "multiclass")
EXTRA_PRESETS = ("nih14", "chexpert", "padchest", "vindr", "custom")   # data.extra: external labelled sets
EXTRA_UNCERTAIN = ("ignore", "ones", "zeros")                          # a -1 (uncertain) cell
EXTRA_BLANK = ("negative", "ignore")                                   # an empty cell of a label column
EXTRA_RATERS = ("majority", "any", "mean")                             # several readers per image (VinDr-CXR)
RESIZE_MODES = ("stretch", "pad")
CACHE_FORMATS = ("png", "jpg")
FOLD_SCHEMES = ("kfold", "given")
PRETRAINED_FORMATS = ("timm", "torchxrayvision", "hf-dinov2")
HEADS = ("linear", "ml_decoder", "csra")
CLASS_QUERIES = ("learned", "text")
LOSSES = ("focal", "bce", "weighted_bce", "asl", "ldam", "db", "ral", "ce")
CLASS_WEIGHTS = ("inverse", "inverse_sqrt", "cb", "rw")
MOSAIC_VARIANTS = ("crop", "resize")
MIX_LABELS = ("union", "linear")
PRECISIONS = ("no", "fp16", "bf16")
SAMPLERS = ("random", "class_aware", "class_balanced")
# timm optimizer names (timm.optim.create_optimizer_v2; a test checks each is in timm's registry)
OPTIMIZERS = ("adamw", "adam", "nadamw", "radam", "adan", "adopt", "lamb", "lion", "laprop", "sgd", "momentum",
              "rmsproptf", "adafactor", "madgrad", "lars")
# cosine: linear warmup then cosine (train.optim.WarmupCosine); the others: timm's create_scheduler_v2
SCHEDULERS = ("cosine", "tanh", "poly", "wsd", "constant")
TRACKERS = ("tensorboard", "wandb", "mlflow")
STAGE2_METHODS = ("crt", "tau_norm", "fusion")
CACHE_DTYPES = ("float16", "float32")
TTA_MEANS = ("prob", "logit", "gmean")
OOF_NORMALISE = ("none", "rank", "logit_standardise")
USE_FULL_FIT = ("none", "with_folds", "alone")
BLEND_MODES = ("mean", "rank", "fit", "route")
CALIBRATIONS = ("none", "temperature", "isotonic")
PLATFORMS = ("codabench", "codalab")
TTA_VIEW = re.compile(r"^(scale|rotate)_([-+]?\d+(?:\.\d+)?)$")
