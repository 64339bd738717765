"""Teacher soft targets with a leak guard (pseudo-labels, distillation): student fold k's targets
come from the teacher's fold-k model only (planted as distinct per-fold models and as distinct
per-fold logits files), with temperature; a teacher trained on other folds, on a film to be
pseudo-labelled, unfinished, or retrained since its logits were written is refused in one line."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from cxrlt.config import load_config, save_resolved
from cxrlt.data.experiment import Experiment
from cxrlt.data.stages import build_folds
from cxrlt.data.pseudo import ids_hash, logits_file, pseudo_targets
from cxrlt.data.splits import current_assignment
from cxrlt.errors import CxrltError
from cxrlt.experiment import fingerprint
from cxrlt.fileio import read_table, stamps, to_json, write_csv, write_text
from cxrlt.stage import seal

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
K = 3


def recipe(tiny_root, tmp_path, out, *extra):
    return load_config(ROOT / "experiments" / "demo.yaml", [
        f"data.input_dir={tiny_root}", f"cache.dir={tmp_path / 'cache'}", "cache.size=32", f"folds.k={K}",
        f"folds.dir={tmp_path / 'folds'}", "cache.workers=1", f"output_dir={tmp_path / out}", "predict.workers=0",
        *extra])


@pytest.fixture
def pair(tiny_root, tmp_path):
    """(student cfg, teacher folder): the same demo and folds; the teacher's folds finished (best.pt, done.json)."""
    student = recipe(tiny_root, tmp_path, "student")
    build_folds(student)
    teacher = recipe(tiny_root, tmp_path, "teacher")
    tdir = tmp_path / "teacher"
    save_resolved(teacher, tdir / "config.yaml")
    for k in range(K):
        (tdir / f"fold{k}").mkdir(parents=True)
        (tdir / f"fold{k}" / "best.pt").write_bytes(b"planted")
        (tdir / f"fold{k}" / "done.json").write_text("{}")
    return student, tdir


def plant(student, tdir, split, value_of_fold, folds_hash=None, labels=None):
    """Fold k's logits file: every film, every label = value_of_fold(k), stamped as the pass does."""
    spec = Experiment.of(student).spec
    labels = list(labels or spec.labels)
    for k in range(K):
        ids = _ids(student, split, k)
        f = logits_file(tdir, k, split)
        df = pd.DataFrame(np.full((len(ids), len(labels)), value_of_fold(k), np.float32), columns=labels)
        df.insert(0, "id", ids)
        write_csv(f, df, float_format="%.9g")
        seal(f.with_suffix(".json"), dict(            # as the inference pass stamps it
            checkpoint=stamps({"b": tdir / f"fold{k}" / "best.pt"})["b"],
            folds=folds_hash or current_assignment(student, Experiment.of(student).spec), ids=ids_hash(ids),
            labels=labels), outputs=[f])


def _ids(student, split, k):
    from cxrlt.data.pseudo import _film_ids

    return list(_film_ids(student, split, k)[0])


def sig(z):
    return 1 / (1 + np.exp(-z))


def test_fold_k_targets_come_from_the_fold_k_teacher_only(pair):
    student, tdir = pair
    plant(student, tdir, "test", lambda k: 3.0 * k - 2.0)
    plant(student, tdir, "dev", lambda k: -k - 0.5)
    n_test = len(_ids(student, "test", 0))
    for k in range(K):
        rows = pseudo_targets(student, tdir, ["test", "dev"], fold=k, temperature=2.0, check_cache=False)
        assert rows.fold == k and list(rows.splits[:n_test]) == ["test"] * n_test
        np.testing.assert_allclose(rows.y[:n_test], sig((3.0 * k - 2.0) / 2.0), rtol=1e-6)
        np.testing.assert_allclose(rows.y[n_test:], sig((-k - 0.5) / 2.0), rtol=1e-6)
        assert rows.y.dtype == np.float32 and rows.y.shape[1] == 26


def test_distillation_targets_cover_the_fold_training_part_only(pair):
    student, tdir = pair
    plant(student, tdir, "train", lambda k: float(k))
    from cxrlt.data.datasets import read_split
    from cxrlt.data.folds import folds_path, read_folds

    spec = Experiment.of(student).spec
    train = read_split(spec, "train", labels="none")
    folds = read_folds(folds_path(student, spec), spec, train, k=K).set_index(spec.id_col).fold
    for k in range(K):
        rows = pseudo_targets(student, tdir, ["train"], fold=k, check_cache=False)
        held = set(folds.index[folds == k])
        assert not held & set(rows.ids) and len(rows) == int((folds != k).sum())
        np.testing.assert_allclose(rows.y, sig(float(k)), rtol=1e-6)


def test_teacher_labels_missing_in_the_student_are_unlabelled(pair):
    student, tdir = pair
    plant(student, tdir, "test", lambda k: 0.0, labels=["Cardiomegaly", "Normal"])   # Normal = No Finding (alias)
    rows = pseudo_targets(student, tdir, ["test"], fold=0, check_cache=False)
    names = list(Experiment.of(student).spec.labels)
    labelled = [names.index("Cardiomegaly"), names.index("No Finding")]
    assert (rows.y[:, labelled] == 0.5).all()
    assert np.isnan(np.delete(rows.y, labelled, axis=1)).all()


def test_a_teacher_with_another_fold_assignment_is_refused(pair, tiny_root, tmp_path):
    student, tdir = pair
    plant(student, tdir, "test", lambda k: 0.0, folds_hash="0123456789abcdef")
    with pytest.raises(CxrltError, match=r"fold assignment 0123456789abcdef, the student's is [0-9a-f]{16}"):
        pseudo_targets(student, tdir, ["test"], fold=0, check_cache=False)
    other = recipe(tiny_root, tmp_path, "teacher", "folds.k=5")
    save_resolved(other, tdir / "config.yaml")
    with pytest.raises(CxrltError, match=r"folds.k=5, the student has kfold, 3"):
        pseudo_targets(student, tdir, ["test"], fold=0, check_cache=False)


def test_a_teacher_that_trained_on_a_pseudo_film_is_refused(pair, tiny_root, tmp_path):
    student, tdir = pair
    # the teacher's training CSV: the demo's plus one test film
    demo = tiny_root / "demo"
    train, test = read_table(demo / "train.csv", "dicom_id"), read_table(demo / "test.csv", "dicom_id")
    (tmp_path / "tin" / "demo").mkdir(parents=True)
    write_csv(tmp_path / "tin" / "demo" / "train.csv", pd.concat([train, test.iloc[:1]], ignore_index=True).fillna(0))
    teacher = recipe(tiny_root, tmp_path, "teacher", f"data.train_csv={tmp_path / 'tin' / 'demo' / 'train.csv'}")
    save_resolved(teacher, tdir / "config.yaml")
    plant(student, tdir, "test", lambda k: 0.0)
    with pytest.raises(CxrltError, match=rf"trained on 1 of the test films to be pseudo-labelled \(e.g. '{test.dicom_id[0]}'\)"):
        pseudo_targets(student, tdir, ["test"], fold=0, check_cache=False)
    # distillation on the student's own training films is what the fold rule is for, not refused
    plant(student, tdir, "train", lambda k: 0.0)
    assert len(pseudo_targets(student, tdir, ["train"], fold=0, check_cache=False)) == len(_ids(student, "train", 0))


def test_stale_missing_or_unfinished_teacher_files_are_refused(pair):
    student, tdir = pair
    with pytest.raises(CxrltError, match=r"no fold-0 teacher logits for 'test' yet; write them with python -m cxrlt.train.teacher"):
        pseudo_targets(student, tdir, ["test"], fold=0, check_cache=False)
    plant(student, tdir, "test", lambda k: 0.0)
    (tdir / "fold1" / "best.pt").write_bytes(b"retrained")
    with pytest.raises(CxrltError, match=r"retrained since"):
        pseudo_targets(student, tdir, ["test"], fold=1, check_cache=False)
    (tdir / "fold2" / "done.json").unlink()
    with pytest.raises(CxrltError, match=r"fold 2 is not finished"):
        pseudo_targets(student, tdir, ["test"], fold=0, check_cache=False)
    with pytest.raises(CxrltError, match=r"is the student's own folder"):
        pseudo_targets(student, student.output_dir, ["test"], fold=0, check_cache=False)


def test_the_inference_pass_runs_each_fold_model_and_caches(pair, tmp_path):
    """Real fold checkpoints (test_resnet, classifier weights 0 and bias 10 k - 5): the pass writes fold
    k's logits from fold k's model, a second call reuses them, a checkpoint with other folds is refused."""
    from cxrlt.data.images import Cache, cache_images
    from cxrlt.train.teacher import teacher_logits
    from cxrlt.models.checkpoint import save
    from cxrlt.models.factory import arch_record, model_from_arch

    student, tdir = pair
    t = Experiment.from_folder(tdir)
    spec = t.spec
    test = read_table(spec.test_csv, spec.id_col)
    cache_images(Cache.from_config(t.cfg, spec.name), [(i, str(spec.image_root / p)) for i, p in
                                                       zip(test[spec.id_col], test[spec.path_col])], 1, False)
    arch = arch_record(t.cfg.model, spec.labels, 32, "stretch", 0.5, 0.25)
    assignment = current_assignment(student, Experiment.of(student).spec)

    def write(k, folds):
        net = model_from_arch(arch)
        clf = net.get_classifier()
        with torch.no_grad():
            clf.weight.zero_()
            clf.bias.fill_(10.0 * k - 5.0)
        save(dict(model=net.state_dict(), weights="raw", arch=arch, epoch=0, metrics={}, init="scratch", mean=0.5,
                  std=0.25, fingerprint=fingerprint(t.cfg, spec, folds)), tdir / f"fold{k}" / "best.pt")

    for k in range(K):
        write(k, assignment)
    out = teacher_logits(student, tdir, ["test"], progress=False)
    for k in range(K):
        z = read_table(out[(k, "test")], "id")[list(spec.labels)].to_numpy()
        np.testing.assert_allclose(z, 10.0 * k - 5.0, atol=1e-5)
        rows = pseudo_targets(student, tdir, ["test"], fold=k, temperature=5.0, check_cache=False)
        np.testing.assert_allclose(rows.y, sig((10.0 * k - 5.0) / 5.0), rtol=1e-5)
    before = {k: out[(k, "test")].stat().st_mtime_ns for k in range(K)}
    teacher_logits(student, tdir, ["test"], progress=False)
    assert {k: out[(k, "test")].stat().st_mtime_ns for k in range(K)} == before      # cached: nothing rewritten
    write(1, "0123456789abcdef")
    with pytest.raises(CxrltError, match=r"fold1/best.pt: trained with fold assignment 0123456789abcdef"):
        teacher_logits(student, tdir, ["test"], progress=False)
    assert json.loads(out[(0, "test")].with_suffix(".json").read_text())["views"] == ["none", "hflip"]


def test_a_blend_teacher_weighs_its_members_with_the_weights_fitted_without_fold_k(pair, tmp_path):
    """Student fold k from a blend: sum over members of w_m(k) sigmoid(z_m,k / T), w(k) the blend's
    weights fitted on the other folds (weights.json honest_weights), never the all-fold fit; rank
    blends give no probabilities and are refused."""
    import shutil

    student, tdir = pair
    other = tmp_path / "teacher_b"
    shutil.copytree(tdir, other)
    save_resolved(Experiment.from_folder(other).cfg, other / "config.yaml")
    plant(student, tdir, "test", lambda k: float(k))
    plant(student, other, "test", lambda k: -2.0 * k)
    blend = tmp_path / "blend"
    cfg = load_config(ROOT / "experiments" / "demo_blend.yaml", [f"data.input_dir={student.data.input_dir}",
                      f"folds.k={K}", f"output_dir={blend}", f"blend.members=[{tdir},{other}]"])
    save_resolved(cfg, blend / "config.yaml")
    honest = {str(k): {str(tdir): 0.25 * (k + 1), str(other): 1 - 0.25 * (k + 1)} for k in range(K)}
    write_text(blend / "weights.json", to_json(dict(mode="fit", weights={str(tdir): 0.9, str(other): 0.1},
                                                    honest_weights=honest)))
    for k in range(K):
        rows = pseudo_targets(student, blend, ["test"], fold=k, temperature=2.0, check_cache=False)
        a = 0.25 * (k + 1)
        np.testing.assert_allclose(rows.y, a * sig(k / 2.0) + (1 - a) * sig(-2.0 * k / 2.0), rtol=1e-6)
    write_text(blend / "weights.json", to_json(dict(mode="rank", weights={str(tdir): 0.5, str(other): 0.5})))
    with pytest.raises(CxrltError, match=r"a blend.mode=rank blend; a teacher blend must be mode fit"):
        pseudo_targets(student, blend, ["test"], fold=0, check_cache=False)


def test_a_folder_of_unlabelled_films_is_pseudo_labelled_by_fold_and_a_seen_film_refused(pair, tiny_root, tmp_path):
    """train.pseudo.folder: every image file under it (ids folder:<relative path>, in path order) gets
    fold k's targets from the teacher's fold-k model; a film that is one of the teacher's training
    images (the same file, here through a link) is refused."""
    import os
    import shutil

    student, tdir = pair
    spec = Experiment.of(student).spec
    train = read_table(spec.train_csv, spec.id_col)
    films = tiny_root / "unlabelled"
    shutil.rmtree(films, ignore_errors=True)
    (films / "b").mkdir(parents=True)
    for j, rel in enumerate(["a.png", "b/c.png", "b/d.jpg"]):
        shutil.copy(spec.image_root / train[spec.path_col].iloc[j], films / rel)   # copies: new files
    (films / "notes.txt").write_text("not a film")
    cfg = recipe(tiny_root, tmp_path, "student", "train.pseudo.from=x", "train.pseudo.folder=unlabelled")
    from cxrlt.data.pseudo import folder_films

    assert [i for i, _ in folder_films(cfg)] == ["folder:a.png", "folder:b/c.png", "folder:b/d.jpg"]
    plant(cfg, tdir, "folder", lambda k: 2.0 * k - 1.0)
    for k in range(K):
        rows = pseudo_targets(cfg, tdir, ["folder"], fold=k, check_cache=False)
        assert list(rows.ids) == ["folder:a.png", "folder:b/c.png", "folder:b/d.jpg"]
        np.testing.assert_allclose(rows.y, sig(2.0 * k - 1.0), rtol=1e-6)
    os.symlink(spec.image_root / train[spec.path_col].iloc[5], films / "seen.png")
    with pytest.raises(CxrltError, match=r"trained on 1 of the films of train.pseudo.folder \(e.g. 'folder:seen.png'\)"):
        pseudo_targets(cfg, tdir, ["folder"], fold=0, check_cache=False)
    shutil.rmtree(films)
