import pandas as pd
import pytest

from cxrlt.config import Config
from cxrlt.data.datasets import PRESETS, check_images_exist, read_split, resolve_dataset
from cxrlt.data.labels import LABELS_2023
from cxrlt.errors import CxrltError


def data_cfg(**kw):
    return Config(dict(dict(preset="demo", input_dir="input"), **kw))


@pytest.mark.parametrize("preset,n,id_col,first", [
    ("cxr-lt-2023", 26, "dicom_id", "Atelectasis"),
    ("cxr-lt-2024-task1", 40, "dicom_id", "Adenopathy"),
    ("cxr-lt-2024-task2", 26, "dicom_id", "Atelectasis"),
    ("cxr-lt-2026", 30, "ImageID", "Normal"),
    ("demo", 26, "dicom_id", "Atelectasis"),
])
def test_presets_parse(preset, n, id_col, first):
    spec = resolve_dataset(data_cfg(preset=preset))
    assert len(spec.labels) == n and spec.labels[0] == first and spec.id_col == id_col
    assert spec.train_csv.name == PRESETS[preset]["train_csv"]
    assert spec.normal_label in spec.labels


def test_task2_renames_no_finding_in_place():
    spec = resolve_dataset(data_cfg(preset="cxr-lt-2024-task2"))
    assert spec.labels[LABELS_2023.index("No Finding")] == "Normal"
    assert "No Finding" not in spec.labels and spec.path_col == "fpath"


def test_custom_needs_its_columns_and_unknown_preset_fails():
    with pytest.raises(CxrltError, match="data.id_col"):
        resolve_dataset(data_cfg(preset="custom", dir="x", train_csv="t.csv"))
    with pytest.raises(CxrltError, match="not one of"):
        resolve_dataset(data_cfg(preset="cxr-lt-2099"))


LABELS = ["A", "B"]


def make(tmp_path, rows, header=("id", "path", "pid", "A", "B")):
    (tmp_path / "d").mkdir(exist_ok=True)
    pd.DataFrame(rows, columns=list(header)).to_csv(tmp_path / "d" / "train.csv", index=False)
    return resolve_dataset(data_cfg(preset="custom", input_dir=str(tmp_path), dir="d", train_csv="train.csv",
                                    id_col="id", path_col="path", patient_col="pid", labels=LABELS,
                                    label_map={"-1": 0}))


def one_line(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_missing_file(tmp_path):
    spec = resolve_dataset(data_cfg(preset="demo", input_dir=str(tmp_path)))
    with pytest.raises(CxrltError) as e:
        read_split(spec, "train", "required")
    assert "demo/train.csv: file not found" in one_line(e)


def test_missing_column(tmp_path):
    spec = make(tmp_path, [["a", "a.png", "p", 0]], header=("id", "path", "pid", "A"))
    with pytest.raises(CxrltError) as e:
        read_split(spec, "train", "required")
    assert "train.csv: missing column 'B'" in one_line(e)


def test_duplicated_id(tmp_path):
    spec = make(tmp_path, [["a", "a.png", "p", 0, 1], ["b", "b.png", "p", 0, 1], ["a", "c.png", "q", 1, 0]])
    with pytest.raises(CxrltError) as e:
        read_split(spec, "train", "required")
    assert "id 'a' in column 'id' appears 2 times (rows 2, 4)" in one_line(e)


@pytest.mark.parametrize("bad", ["2", "0.5", "yes", ""])
def test_label_not_0_1(tmp_path, bad):
    spec = make(tmp_path, [["a", "a.png", "p", 0, 1], ["b", "b.png", "p", 1, bad]])
    with pytest.raises(CxrltError) as e:
        read_split(spec, "train", "required")
    assert f"row 3, column 'B': label value '{bad}' is not 0 or 1" in one_line(e)


def test_label_map_and_types(tmp_path):
    spec = make(tmp_path, [["a", "a.png", "p", "-1", "1"], ["b", "b.png", "p", "1.0", "0"]])
    df = read_split(spec, "train", "required")
    assert df["A"].tolist() == [0, 1] and df["B"].tolist() == [1, 0] and df["A"].dtype == "uint8"


def test_missing_images_counted(tmp_path):
    spec = make(tmp_path, [["a", "a.png", "p", 0, 1], ["b", "b.png", "p", 0, 1], ["c", "c.png", "q", 1, 0]])
    (tmp_path / "d" / "b.png").write_bytes(b"x")
    df = read_split(spec, "train", "required")
    with pytest.raises(CxrltError) as e:
        check_images_exist(spec, df, "train")
    assert "2 of 3 image files missing under" in one_line(e) and "a.png (row 2), c.png (row 4)" in one_line(e)


def test_test_split_needs_no_labels(tiny_root):
    spec = resolve_dataset(data_cfg(preset="demo", input_dir=str(tiny_root)))
    test = read_split(spec, "test", "none")
    assert "Atelectasis" not in test.columns and len(test) == 40


def test_label_check_names_first_bad_cell_and_counts(tmp_path):
    """The vectorised check (each distinct text parsed once) gives the first design's line: first
    bad row, column, raw value, how many such cells; spaces and data.label_map as before."""
    rows = [[f"i{k}", f"{k}.png", "p", " 1 ", "0"] for k in range(50)]
    rows[7][4], rows[30][4], rows[41][4] = "maybe", "2", "maybe"
    spec = make(tmp_path, rows)
    with pytest.raises(CxrltError) as e:
        read_split(spec, "train", "required")
    assert one_line(e).endswith("train.csv: row 9, column 'B': label value 'maybe' is not 0 or 1; 3 such cells "
                                "in this column")
    rows[7][4] = rows[30][4] = rows[41][4] = "-1"                   # mapped to 0
    spec = make(tmp_path, rows)
    df = read_split(spec, "train", "required")
    assert (df["A"] == 1).all() and (df["B"] == 0).all() and df["B"].dtype == "uint8"


def test_read_once_while_the_bytes_are_unchanged(tmp_path, monkeypatch):
    """A stage's repeated reads of one CSV parse it once; a copy each time; a rewrite of the same size
    (within the file system's timestamp granularity) is read again."""
    import cxrlt.data.datasets as ds

    spec = make(tmp_path, [["a", "a.png", "p", 0, 1], ["b", "b.png", "q", 1, 0]])
    calls = []
    real = ds._read_split
    monkeypatch.setattr(ds, "_read_split", lambda *a: calls.append(1) or real(*a))
    first = read_split(spec, "train", "required")
    first.loc[0, "A"] = 1                                           # a caller's change stays its own
    again = read_split(spec, "train", "required")
    assert len(calls) == 1 and again["A"].tolist() == [0, 1]
    make(tmp_path, [["a", "a.png", "p", 1, 1], ["b", "b.png", "q", 1, 0]])   # same size, new bytes
    assert read_split(spec, "train", "required")["A"].tolist() == [1, 1] and len(calls) == 2
