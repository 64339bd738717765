"""External labelled sets (data.extra): the four presets parsed from small files in their real
formats, the mapping to the competition's labels (alias table, preset and recipe maps), unlabelled
findings as NaN, policies for uncertain / blank cells and several readers, training-only rows with
namespaced ids, and the one-line refusals (bad cells, a set holding competition films, paths out of
the root, maps naming unknown labels)."""
from pathlib import Path

import numpy as np
import pytest

from cxrlt import schema
from cxrlt.config import Config, deep_merge, validate
from cxrlt.data.external import extra_specs, extra_training_rows, read_extra
from cxrlt.errors import CxrltError

COMP = ["Atelectasis", "Cardiomegaly", "No Finding", "Pleural Effusion", "Fibrosis", "Support Devices", "Fracture"]
NAN = np.nan


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.lstrip("\n"))
    return path


def recipe(tmp_path, extra, **data):
    """A custom competition of 3 films (labels COMP) in tmp_path/input/comp, and data.extra."""
    write(tmp_path / "input" / "comp" / "train.csv",
          "id,path,pid," + ",".join(COMP) + "\n" + "".join(f"c{i},c{i}.png,p{i}," + ",".join(["0"] * len(COMP)) + "\n"
                                                            for i in range(3)))
    d = dict(preset="custom", input_dir=str(tmp_path / "input"), dir="comp", train_csv="train.csv", id_col="id",
             path_col="path", patient_col="pid", labels=COMP, extra=extra, **data)
    cfg = Config(validate(deep_merge(schema.defaults(), dict(data=d, cache=dict(dir=str(tmp_path / "cache"))))))
    cfg["recipe"], cfg["overrides"], cfg["name"], cfg["output_dir"] = str(tmp_path / "r.yaml"), [], "r", str(tmp_path / "exp")
    return cfg


def table(cfg, i=0):
    return read_extra(extra_specs(cfg)[i], tuple(COMP))


NIH = """
Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Sex,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],
00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143
00000001_001.png,Cardiomegaly|Effusion,1,1,58,M,PA,2894,2729,0.143,0.143
00000002_000.png,No Finding,0,2,80,M,AP,2500,2048,0.171,0.171
00000003_000.png,Hernia|Fibrosis,0,3,74,F,PA,2500,2048,0.168,0.168
"""


def test_nih14_findings_map_by_name_alias_and_preset_map(tmp_path):
    write(tmp_path / "input" / "nih-chestxray14" / "Data_Entry_2017_v2020.csv", NIH)
    t = table(recipe(tmp_path, [dict(preset="nih14")]))
    assert list(t.ids) == ["00000001_000.png", "00000001_001.png", "00000002_000.png", "00000003_000.png"]
    assert list(t.patients) == ["1", "1", "2", "3"] and list(t.views) == ["PA", "PA", "AP", "PA"]
    # Effusion -> Pleural Effusion (the preset's map); Support Devices / Fracture: ChestX-ray14 has none
    want = np.array([[0, 1, 0, 0, 0, NAN, NAN], [0, 1, 0, 1, 0, NAN, NAN], [0, 0, 1, 0, 0, NAN, NAN],
                     [0, 0, 0, 0, 1, NAN, NAN]], np.float32)
    np.testing.assert_array_equal(t.y, want)
    assert t.mapped["Pleural Effusion"] == ("Effusion",)
    assert t.paths[0] == tmp_path / "input" / "nih-chestxray14" / "images" / "00000001_000.png"


def test_nih14_unknown_finding_is_one_line_naming_the_row(tmp_path):
    write(tmp_path / "input" / "nih-chestxray14" / "Data_Entry_2017_v2020.csv", NIH.replace("Hernia|", "Hernai|"))
    with pytest.raises(CxrltError, match=r"Data_Entry_2017_v2020.csv: row 5, column 'Finding Labels': 'Hernai'"):
        table(recipe(tmp_path, [dict(preset="nih14")]))


CHEXPERT = """
Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices
CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0
CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Female,87,Frontal,AP,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,
CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg,Female,83,Lateral,,,,,1.0,,,,,,,,,1.0,
"""


@pytest.mark.parametrize("uncertain,blank", [("ignore", "negative"), ("ones", "negative"), ("zeros", "ignore")])
def test_chexpert_uncertain_and_blank_policies(tmp_path, uncertain, blank):
    write(tmp_path / "input" / "chexpert" / "train.csv", CHEXPERT)
    t = table(recipe(tmp_path, [dict(preset="chexpert", uncertain=uncertain, blank=blank)]))
    u = {"ignore": NAN, "ones": 1, "zeros": 0}[uncertain]
    b = {"negative": 0, "ignore": NAN}[blank]
    # COMP: Atelectasis, Cardiomegaly, No Finding, Pleural Effusion, Fibrosis (not in CheXpert), Support Devices, Fracture
    want = np.array([[b, b, 1, b, NAN, 1, b], [u, u, b, u, NAN, b, 1], [b, b, b, b, NAN, b, 1]], np.float32)
    np.testing.assert_array_equal(t.y, want)
    assert list(t.patients) == ["patient00001", "patient00002", "patient00002"]
    assert list(t.views) == ["AP", "AP", "LATERAL"]


def test_chexpert_frontal_only_and_bad_cell(tmp_path):
    write(tmp_path / "input" / "chexpert" / "train.csv", CHEXPERT)
    t = table(recipe(tmp_path, [dict(preset="chexpert", views=["AP", "PA"])]))
    assert len(t.ids) == 2 and t.dropped == {"other views": 1}
    write(tmp_path / "input" / "chexpert" / "train.csv", CHEXPERT.replace("Female,87,Frontal,AP,,,-1.0", "Female,87,Frontal,AP,,,2"))
    with pytest.raises(CxrltError, match=r"train.csv: row 3, column 'Cardiomegaly': label value '2' is not 1, 0, -1"):
        table(recipe(tmp_path, [dict(preset="chexpert")]))


PADCHEST = """
ImageID,ImageDir,StudyDate_DICOM,StudyID,PatientID,PatientBirth,PatientSex_DICOM,ViewPosition_DICOM,Projection,MethodProjection,Labels,Localizations
a1.png,0,20140101,s1,pt1,1950,M,POSTEROANTERIOR,PA,Manual review of DICOM fields,"['cardiomegaly', 'pleural effusion']",[]
a2.png,0,20140102,s2,pt1,1950,M,POSTEROANTERIOR,PA,Manual review of DICOM fields,['normal'],[]
a3.png,1,20140103,s3,pt2,1960,F,LATERAL,L,Manual review of DICOM fields,"[' atelectasis', 'hiatal hernia']",[]
a4.png,1,20140104,s4,pt3,1970,F,,PA,Manual review of DICOM fields,['exclude'],[]
a5.png,1,20140105,s5,pt4,1970,F,,PA,Manual review of DICOM fields,,[]
"""


def test_padchest_lists_normal_alias_and_exclusions(tmp_path):
    write(tmp_path / "input" / "padchest" / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", PADCHEST)
    t = table(recipe(tmp_path, [dict(preset="padchest")]))
    assert list(t.ids) == ["a1.png", "a2.png", "a3.png"] and t.dropped == {"no labels, or marked exclude": 2}
    # labelled: what occurs in the file (cardiomegaly, pleural effusion, normal -> No Finding, atelectasis)
    want = np.array([[0, 1, 0, 1, NAN, NAN, NAN], [0, 0, 1, 0, NAN, NAN, NAN], [1, 0, 0, 0, NAN, NAN, NAN]], np.float32)
    np.testing.assert_array_equal(t.y, want)
    assert list(t.views) == ["PA", "PA", "L"] and list(t.patients) == ["pt1", "pt1", "pt2"]
    write(tmp_path / "input" / "padchest" / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv",
          PADCHEST.replace("['normal']", "normal"))
    with pytest.raises(CxrltError, match=r"row 3, column 'Labels': 'normal' is not a list of findings"):
        table(recipe(tmp_path, [dict(preset="padchest")]))


VINDR_COLS = ("Aortic enlargement,Atelectasis,Calcification,Cardiomegaly,Clavicle fracture,Consolidation,Edema,"
              "Emphysema,Enlarged PA,ILD,Infiltration,Lung Opacity,Lung cavity,Lung cyst,Mediastinal shift,"
              "Nodule/Mass,Pleural effusion,Pleural thickening,Pneumothorax,Pulmonary fibrosis,Rib fracture,"
              "Other lesion,COPD,Lung tumor,Pneumonia,Tuberculosis,Other diseases,No finding").split(",")


def vindr_row(image, rad, positives):
    return ",".join([image, rad] + ["1" if c in positives else "0" for c in VINDR_COLS])


@pytest.mark.parametrize("raters,cardio,fib", [("majority", 1, 0), ("any", 1, 1), ("mean", 2 / 3, 1 / 3)])
def test_vindr_readers_aggregated(tmp_path, raters, cardio, fib):
    rows = [vindr_row("img1", "R1", {"Cardiomegaly"}), vindr_row("img1", "R2", {"Cardiomegaly", "Pulmonary fibrosis"}),
            vindr_row("img1", "R3", {"No finding"}), vindr_row("img2", "R4", {"No finding"}),
            vindr_row("img2", "R5", {"No finding"}), vindr_row("img2", "R6", {"No finding"})]
    write(tmp_path / "input" / "vindr-cxr" / "annotations" / "image_labels_train.csv", "image_id,rad_id," + ",".join(VINDR_COLS) + "\n"
          + "\n".join(rows) + "\n")
    t = table(recipe(tmp_path, [dict(preset="vindr", raters=raters)]))
    assert list(t.ids) == ["img1", "img2"] and list(t.patients) == ["img1", "img2"]
    nf = {"majority": 0, "any": 1, "mean": 1 / 3}[raters]
    want = np.array([[0, cardio, nf, 0, fib, NAN, NAN], [0, 0, 1, 0, 0, NAN, NAN]], np.float32)
    np.testing.assert_allclose(t.y, want, rtol=1e-6)
    assert t.paths[0] == tmp_path / "input" / "vindr-cxr" / "train" / "img1.dicom"


def custom_set(tmp_path, rows="x1,x1.png,q1,1,,0\nx2,x2.png,q1,0,1,-1\nx3,x3.png,q2,,,\n"):
    write(tmp_path / "input" / "ext" / "labels.csv", "img,file,patient,Heart,Fluid,Lung collapse\n" + rows)
    return dict(name="ext", dir="ext", csv="labels.csv", id_col="img", path_col="file", patient_col="patient",
                labels=["Heart", "Fluid", "Lung collapse"], map={"Heart": "Cardiomegaly", "Fluid": "Pleural Effusion",
                                                                  "Lung collapse": "Atelectasis"}, blank="ignore")


def test_custom_set_rows_are_training_only_with_namespaced_ids(tmp_path):
    cfg = recipe(tmp_path, [custom_set(tmp_path)])
    rows = extra_training_rows(cfg, check_cache=False)
    assert list(rows.ids) == ["extra:ext:x1", "extra:ext:x2"]          # x3 labels nothing: left out
    assert list(rows.patients) == ["ext:q1", "ext:q1"] and list(rows.sets) == ["ext", "ext"]
    np.testing.assert_array_equal(rows.folds, [-1, -1])
    np.testing.assert_array_equal(rows.y, np.array([[0, 1, NAN, NAN, NAN, NAN, NAN], [NAN, 0, NAN, 1, NAN, NAN, NAN]],
                                                   np.float32))
    assert rows.labelled == {"ext": ("Atelectasis", "Cardiomegaly", "Pleural Effusion")}
    assert rows.files[0].parent == tmp_path / "cache" / "extra" / "ext" / "768_stretch_png"
    with pytest.raises(CxrltError, match=r"2 ids have no cached image in .*extra/ext/768_stretch_png"):
        extra_training_rows(cfg)


def test_a_set_holding_competition_films_is_refused(tmp_path):
    cfg = recipe(tmp_path, [custom_set(tmp_path, rows="c1,x1.png,q1,1,0,0\n")])
    with pytest.raises(CxrltError, match=r"1 films of data.extra\[0\] \(ext\) are in the competition's train CSV.*'c1'"):
        extra_training_rows(cfg, check_cache=False)


def test_maps_and_paths_are_checked_in_one_line(tmp_path):
    e = custom_set(tmp_path)
    with pytest.raises(CxrltError, match=r"data.extra\[0\] \(ext\).map: 'Hart' is not one of the set's labels"):
        table(recipe(tmp_path, [dict(e, map={"Hart": "Cardiomegaly"})]))
    with pytest.raises(CxrltError, match=r"'Heart' -> 'Big heart': 'Big heart' is not one of the competition's labels"):
        table(recipe(tmp_path, [dict(e, map={"Heart": "Big heart"})]))
    with pytest.raises(CxrltError, match=r"none of its labels .* names one of the competition's"):
        table(recipe(tmp_path, [dict(e, map={})]))
    # a null drops a label that would match by name
    t = table(recipe(tmp_path, [dict(e, map={"Heart": None, "Fluid": "Pleural Effusion"})]))
    assert list(t.mapped) == ["Pleural Effusion"]
    cfg = recipe(tmp_path, [custom_set(tmp_path, rows="x1,../../etc/x.png,q1,1,0,0\n")])
    with pytest.raises(CxrltError, match=r"labels.csv: row 2, column 'file': image path '../../etc/x.png' leads outside"):
        table(cfg)
    with pytest.raises(CxrltError, match="two sets of data.extra have this name"):
        extra_specs(recipe(tmp_path, [e, e]))
    with pytest.raises(CxrltError, match=r"data.extra.0.preset must be one of nih14, chexpert"):
        recipe(tmp_path, [dict(e, preset="nih")])
    with pytest.raises(CxrltError, match=r"unknown key 'data.extra.0.colour'"):
        recipe(tmp_path, [dict(e, colour=1)])


def test_several_labels_mapped_to_one_finding_are_ored(tmp_path):
    e = custom_set(tmp_path, rows="x1,x1.png,q1,1,0,\nx2,x2.png,q1,0,0,\nx3,x3.png,q2,,1,0\n")
    e["map"] = {"Heart": "Fracture", "Fluid": "Fracture", "Lung collapse": "Atelectasis"}
    t = table(recipe(tmp_path, [e]))
    np.testing.assert_array_equal(t.y[:, COMP.index("Fracture")], [1, 0, 1])      # x3: Heart unlabelled, Fluid 1
    np.testing.assert_array_equal(t.y[:, COMP.index("Atelectasis")], [NAN, NAN, 0])


def test_demo_external_set_is_cached_resumably_and_gives_partial_rows(tiny_root, tmp_path):
    """experiments/demo_extra.yaml on a tiny demo: stage 01 caches the external set into its own
    folder (a second run decodes nothing), and its rows carry NaN for the 18 findings it does not label."""
    from cxrlt.config import load_config
    from cxrlt.data.demo import EXTRA_RELABEL, make_external
    from cxrlt.data.images import read_cached
    from cxrlt.data.stages import prepare_extra_cache
    from cxrlt.data.labels import LABELS_2023

    make_external(tiny_root / "demo_extra", n=12, max_side=64, workers=1, uncertain=0.3, blank=0.1, progress=False)
    cfg = load_config(Path(__file__).resolve().parents[1] / "experiments" / "demo_extra.yaml", [
        f"data.input_dir={tiny_root}", f"cache.dir={tmp_path / 'cache'}", "cache.size=32", "cache.workers=1",
        f"output_dir={tmp_path / 'exp'}"])
    first = prepare_extra_cache(cfg, progress=False)
    assert [(r["name"], r["written"], r["skipped"]) for r in first] == [("demo_extra", 12, 0)]
    again = prepare_extra_cache(cfg, progress=False)
    assert [(r["written"], r["skipped"]) for r in again] == [(0, 12)]
    rows = extra_training_rows(cfg)
    assert len(rows) == 12 and all(i.startswith("extra:demo_extra:") for i in rows.ids)
    assert read_cached(rows.files[0]).shape == (32, 32)
    assert rows.files[0].parent == tmp_path / "cache" / "extra" / "demo_extra" / "32_stretch_png"
    labelled = [LABELS_2023.index(x) for x in EXTRA_RELABEL]
    others = [j for j in range(len(LABELS_2023)) if j not in labelled]
    assert np.isnan(rows.y[:, others]).all() and len(others) == 18
    # the file's cells: 1 / 0, -1 -> NaN (uncertain: ignore), empty -> 0 (blank: negative)
    from cxrlt.fileio import read_table
    raw = read_table(tiny_root / "demo_extra" / "labels.csv", "image", dtype=str, keep_default_na=False)
    got = rows.y[:, LABELS_2023.index("Lung Opacity")]
    want = raw["alveolar pattern"].map({"1": 1.0, "0": 0.0, "-1": np.nan, "": 0.0}).to_numpy(np.float32)
    np.testing.assert_array_equal(got, want)
    assert (raw[list(EXTRA_RELABEL.values())] == "-1").to_numpy().any()       # the policies were exercised


def test_external_sets_change_no_fold_oof_or_assignment_input(tiny_root, tmp_path):
    """data.extra leaves stage 02's folds, the fold assignment and the OOF table (what stage 04 scores,
    stages 05-06 fit on) exactly as without it: external films are in none of them."""
    from cxrlt.config import load_config
    from cxrlt.data.demo import make_external
    from cxrlt.data.stages import build_folds
    from cxrlt.data.splits import current_assignment, oof_table

    make_external(tiny_root / "demo_extra", n=12, max_side=64, workers=1, uncertain=0.3, blank=0.1, progress=False)
    common = [f"data.input_dir={tiny_root}", f"cache.dir={tmp_path / 'cache'}", f"folds.dir={tmp_path / 'folds'}"]
    root = Path(__file__).resolve().parents[1] / "experiments"
    with_extra = load_config(root / "demo_extra.yaml", common + [f"output_dir={tmp_path / 'a'}"])
    without = load_config(root / "demo.yaml", common + [f"output_dir={tmp_path / 'b'}"])
    build_folds(with_extra)
    folds = (tmp_path / "folds" / "demo_folds.csv").read_bytes()
    build_folds(without, force=True)
    assert (tmp_path / "folds" / "demo_folds.csv").read_bytes() == folds
    from cxrlt.data.experiment import Experiment

    sa, sb = Experiment.of(with_extra).spec, Experiment.of(without).spec
    assert current_assignment(with_extra, sa) == current_assignment(without, sb)
    ids = oof_table(with_extra, sa)["dicom_id"]
    assert list(ids) == list(oof_table(without, sb)["dicom_id"]) and not ids.str.startswith("extra:").any()
    extra = extra_training_rows(with_extra, check_cache=False)
    assert not set(extra.ids) & set(ids) and not {i.split(":", 2)[2] for i in extra.ids} & set(ids)
