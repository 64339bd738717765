"""Every bad value gets one line before any work starts; writes survive a full disk; outputs follow
the umask; a killed writer's temporary files are cleaned up."""
import errno
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from conftest import DEMO, ROOT

from cxrlt.config import load_config
from cxrlt.data.datasets import resolve_dataset
from cxrlt.data.stages import build_folds
from cxrlt.errors import CxrltError
from cxrlt.fileio import remove_stale_tmp, write_atomic, write_text


@pytest.mark.parametrize("override,message", [
    ("train.epochs=abc", "train.epochs='abc': must be a whole number"),
    ("train.epochs=0", "train.epochs=0: must be >= 1"),
    ("train.epochs=2.5", "train.epochs=2.5: must be a whole number"),
    ("train.lr=-1", "train.lr=-1: must be > 0"),
    ("train.batch_size=0", "train.batch_size=0: must be >= 1"),
    ("predict.batch_size=0", "predict.batch_size=0: must be >= 1"),
    ("augment.hflip=2", "augment.hflip=2: must be >= 0 and <= 1"),
    ("folds.k=1", "folds.k=1: must be >= 2"),
    ("train.ema=maybe", "train.ema='maybe': must be true or false"),
    ("loss.label_smoothing=1", "loss.label_smoothing=1: must be >= 0 and < 1"),
])
def test_bad_values_are_refused_at_load(override, message):
    with pytest.raises(CxrltError) as e:
        load_config(DEMO, [override])
    assert str(e.value) == message


def test_bad_value_is_one_line_from_a_stage(stage):
    r = stage("src/03_train.py", "--config", DEMO, "train.epochs=0")
    assert r.returncode == 2 and r.stderr.strip() == "error: train.epochs=0: must be >= 1" and r.stdout == ""


def test_bad_value_is_one_line_from_run_all():
    r = subprocess.run(["bash", "run_all.sh", "traing.epochs=3"], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, PYTHON=sys.executable))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == ["error: override 'traing.epochs=3': no key 'traing' under the top level; "
                                             "did you mean train?"]


# each stage script with --help and with a bad key: one process imports them all and runs each main()
QUICK_START = """
import importlib.util, json, pathlib, sys
answers = []
for path in sorted(pathlib.Path("src").glob("0*.py")) + [pathlib.Path("src/serve.py")]:
    spec = importlib.util.spec_from_file_location("stage_" + path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for argv in (["--help"], ["--config", "experiments/demo.yaml", "traing.epochs=3"]):
        try:
            module.main(argv)
        except SystemExit as e:
            answers.append((path.stem, argv[0], e.code))
heavy = sorted(m for m in ("torch", "timm", "albumentations", "accelerate", "pandas", "sklearn", "gradio", "cv2")
               if m in sys.modules)
print(json.dumps([answers, heavy]))
"""


def test_help_and_a_bad_key_answer_before_the_wing_is_imported():
    """--help and a config error answer in about a second: no stage imports torch & co. before its
    arguments are parsed and its recipe loaded (the wing's imports come after)."""
    r = subprocess.run([sys.executable, "-c", QUICK_START], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), timeout=120)
    assert r.returncode == 0, r.stderr
    answers, heavy = json.loads(r.stdout.strip().splitlines()[-1])
    assert heavy == [], f"imported before any work: {heavy}"
    codes = {(stem, flag): code for stem, flag, code in answers}
    assert len({stem for stem, _ in codes}) == 10 and all(codes[stem, "--help"] == 0 for stem, _ in codes)
    # the recipe stages refuse the bad key (2); 00, 08 and serve have no --config: argparse's 2
    assert all(codes[stem, "--config"] == 2 for stem, _ in codes)
    assert r.stderr.count("error: override 'traing.epochs=3': no key 'traing'") == 7


def test_whole_numbers_and_numbers(tmp_path):
    cfg = load_config(DEMO, ["train.epochs=3.0", "augment.rotate=7.5"])
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int) and cfg.augment.rotate == 7.5


def test_folds_k_needs_two_patients_a_fold(tiny_cfg):
    spec = resolve_dataset(tiny_cfg.data)
    patients = pd.read_csv(spec.train_csv, dtype=str)[spec.patient_col].nunique()
    cfg = load_config(tiny_cfg.recipe, [f"data.input_dir={tiny_cfg.data.input_dir}", f"folds.dir={tiny_cfg.folds.dir}",
                                         f"folds.k={patients}"])
    with pytest.raises(CxrltError, match=f"folds.k={patients}: the training CSV has only {patients} patients"):
        build_folds(cfg)
    assert not list(__import__("pathlib").Path(tiny_cfg.folds.dir).glob("*.csv"))      # nothing written


def test_full_disk_is_one_line_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_text(target, "old")

    def full(tmp):
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CxrltError, match="metrics.json: no space left on the device"):
        write_atomic(target, full)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_outputs_follow_the_umask(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    write_text(tmp_path / "a.csv", "x")
    assert (tmp_path / "a.csv").stat().st_mode & 0o777 == 0o666 & ~mask


def test_temporary_files_of_dead_writers_are_removed(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()                                                                  # a pid that no longer runs
    dead = tmp_path / f".last.pt.{p.pid}.x1.tmp"
    live = tmp_path / f".last.pt.{os.getpid()}.x2.tmp"
    dead.write_text("x")
    live.write_text("x")
    assert remove_stale_tmp(tmp_path) == 1 and not dead.exists() and live.exists()


def test_sixteen_bit_films_scale_in_blocks_and_giant_films_name_the_key(tmp_path):
    import numpy as np
    from PIL import Image

    from cxrlt.data.images import decode_gray

    rng = np.random.default_rng(0)
    arr = rng.integers(100, 60000, (2500, 300), dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "f16.png")
    got = decode_gray(tmp_path / "f16.png")
    want = np.round((arr.astype(np.float64) - arr.min()) * 255.0 / (arr.max() - arr.min())).astype(np.uint8)
    assert got.dtype == np.uint8 and np.abs(got.astype(int) - want).max() <= 1     # float32 blocks vs float64
    with pytest.raises(ValueError, match=r"300x2500 is 1 MP, over cache.max_image_pixels=500000; raise it"):
        decode_gray(tmp_path / "f16.png", max_pixels=500_000)


def test_hints_carry_the_users_overrides(tiny_cfg, tmp_path):
    from cxrlt.data.experiment import Experiment
    from cxrlt.data.splits import training_data

    cfg = load_config(DEMO, [f"data.input_dir={tiny_cfg.data.input_dir}", f"folds.dir={tmp_path / 'none'}",
                             "train.lr=1e-3"])
    with pytest.raises(CxrltError, match=r"no folds yet; run src/02_make_folds.py --config experiments/demo.yaml "
                                         r"data.input_dir=.* folds.dir=.* train.lr=1e-3$"):
        training_data(cfg, Experiment.of(cfg).spec)
