"""The web page and its JSON API: answers equal stage 04's, bad files are 4xx and the server goes
on, 50 concurrent requests, and a real browser (headless Chromium) uploading a film."""
import concurrent.futures
import io
import os
import shutil
import socket
import struct
import threading
import time
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("gradio")
from fastapi.testclient import TestClient  # noqa: E402

from cxrlt.data.datasets import read_split, resolve_dataset  # noqa: E402
from cxrlt.data.images import decode_gray  # noqa: E402
from cxrlt.serve.app import build_app  # noqa: E402
from cxrlt.serve.predictor import Predictor  # noqa: E402


@pytest.fixture(scope="module")
def client(served):
    return TestClient(build_app(Predictor(served[1])))


def _film(cfg, split="test", i=0):
    spec = resolve_dataset(cfg.data)
    df = read_split(spec, split, labels="none")
    return df[spec.id_col].iloc[i], spec.image_root / df[spec.path_col].iloc[i]


def test_api_answers_what_stage_04_predicted(served, client):
    cfg, out = served
    image_id, path = _film(cfg)
    r = client.post("/api/predict", files=[("files", (path.name, path.read_bytes()))])
    assert r.status_code == 200, r.text
    j = r.json()
    f = j["findings"]
    assert len(f) == 26 and [x["probability"] for x in f] == sorted((x["probability"] for x in f), reverse=True)
    test = pd.read_csv(out / "test.csv", dtype={"dicom_id": str}).set_index("dicom_id").loc[image_id]
    for x in f:   # the same decode + resize as the cache, the same fold models and flip-TTA
        assert x["probability"] == pytest.approx(test[x["label"]], abs=1e-5)
    import json

    th = json.loads((out / "thresholds.json").read_text())["thresholds"]
    per_class = json.loads((out / "metrics.json").read_text())["per_class"]
    for x in f:
        assert x["threshold"] == pytest.approx(th[x["label"]]) and x["positive"] == (x["probability"] >= x["threshold"])
        assert x["group"] == per_class[x["label"]]["group"] and x["oof_ap"] == pytest.approx(per_class[x["label"]]["AP"])
    assert j["models"] == 5 and j["images"] == 1 and j["seconds"] > 0
    heat = client.post("/api/heatmap", files=[("files", (path.name, path.read_bytes()))], data={"label": f[0]["label"]})
    assert heat.status_code == 200 and heat.headers["content-type"] == "image/png"
    img = np.array(Image.open(io.BytesIO(heat.content)))
    assert img.ndim == 3 and img.shape[2] == 3 and max(img.shape[:2]) == 512


def _png_claiming(w: int, h: int) -> bytes:
    """A small PNG whose header says w x h (a decompression bomb is refused before decoding)."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    b = bytearray(buf.getvalue())
    ihdr = b[12:29]
    ihdr[4:12] = struct.pack(">II", w, h)
    b[12:29] = ihdr
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(b)


def _dicom(pixels: np.ndarray | None, photometric="MONOCHROME2", syntax=None) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels.astype(np.uint16).tobytes()
        if syntax is not None:   # a compressed syntax wants encapsulated frames (here: not a real codestream)
            from pydicom.encaps import encapsulate

            ds.PixelData = encapsulate([ds.PixelData])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_dicom_decodes_like_the_cache_and_monochrome1_is_inverted():
    px = (np.arange(64 * 48).reshape(64, 48) % 4096).astype(np.uint16)
    m2 = decode_gray(io.BytesIO(_dicom(px)))
    m1 = decode_gray(io.BytesIO(_dicom(px, "MONOCHROME1")))
    want = np.rint((px - px.min()) * (255.0 / (px.max() - px.min()))).astype(np.uint8)
    assert np.array_equal(m2, want) and np.array_equal(m1, 255 - want)


def test_bad_files_are_4xx_and_the_server_goes_on(served, client):
    cfg, _ = served
    _, path = _film(cfg)
    good = [("files", (path.name, path.read_bytes()))]
    truncated = path.read_bytes()[: len(path.read_bytes()) // 3]
    from pydicom.uid import JPEG2000Lossless

    cases = {
        "notes.txt": (b"these are not pixels", 422, "cannot read it as a chest film"),
        "empty.png": (b"", 400, "empty file"),
        "huge.png": (_png_claiming(20000, 20000), 413, "20000x20000"),
        "cut.jpg": (truncated, 422, "cut.jpg"),
        "nopixels.dcm": (_dicom(None), 422, "without pixel data"),
        "j2k.dcm": (_dicom(np.zeros((8, 8)), syntax=JPEG2000Lossless), 422, "cannot be decoded here"),
    }
    for name, (data, status, words) in cases.items():
        r = client.post("/api/predict", files=[("files", (name, data))])
        assert r.status_code == status, (name, r.status_code, r.text)
        assert words in r.json()["error"] and "\n" not in r.json()["error"], name
        assert client.post("/api/predict", files=good).status_code == 200      # still serving
    assert client.post("/api/predict", data={"a": "b"}).json() == {"error": "no `files` in the upload"}
    r = client.post("/api/predict", files=good, data={"views": "PA,LATERAL"})
    assert r.status_code == 400 and "2 given for 1 image" in r.json()["error"]
    r = client.post("/api/heatmap", files=good, data={"label": "Not A Finding"})
    assert r.status_code == 400 and "unknown finding" in r.json()["error"]


@pytest.fixture(scope="module")
def server(served):
    """The app in a real uvicorn server on a free local port, for the load and browser tests."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(build_app(Predictor(served[1])), host="127.0.0.1", port=port, log_level="error"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.1)
    assert srv.started
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    t.join(10)


def test_fifty_concurrent_requests_all_answer_correctly(served, server):
    import httpx

    cfg, _ = served
    _, path = _film(cfg)
    data = path.read_bytes()
    first = httpx.post(f"{server}/api/predict", files=[("files", (path.name, data))], timeout=60).json()

    def one(_):
        r = httpx.post(f"{server}/api/predict", files=[("files", (path.name, data))], timeout=120)
        return r.status_code, r.json()["findings"]

    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(one, range(50)))
    assert time.time() - t0 < 120
    assert all(code == 200 and f == first["findings"] for code, f in answers)


def test_page_in_a_real_browser(served, server, tmp_path):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no Chromium here: apt install chromium chromium-driver (Debian) to run the browser test")
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    cfg, _ = served
    _, path = _film(cfg)
    o = Options()
    o.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        o.add_argument(a)
    d = webdriver.Chrome(service=Service(driver), options=o)
    try:
        d.get(server + "/")
        wait = WebDriverWait(d, 60)
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#films input[type=file]")))
        d.find_element(By.CSS_SELECTOR, "#films input[type=file]").send_keys(str(path))
        wait.until(lambda drv: path.stem in drv.find_element(By.ID, "films").text)    # uploaded
        d.find_element(By.ID, "predict").click()
        rows = wait.until(lambda drv: drv.find_elements(By.CSS_SELECTOR, "#findings-table tr")[1:] or None)
        assert len(rows) == 26
        first = rows[0].find_elements(By.TAG_NAME, "td")
        assert first[0].text and 0 <= float(first[1].text) <= 1 and first[4].text in ("head", "medium", "tail")
        wait.until(lambda drv: drv.find_elements(By.CSS_SELECTOR, "#heatmap img"))
        assert "model(s)" in d.find_element(By.ID, "status").text
        d.save_screenshot(str(os.environ.get("CXRLT_SCREENSHOT") or tmp_path / "page.png"))
    finally:
        d.quit()


def test_the_page_reads_only_files_uploaded_to_it(served):
    """A client naming a server file (here: a training film) in the page's API gets an error, not the file."""
    cfg, out = served
    _, path = _film(cfg, "train")
    with TestClient(build_app(Predictor(out))) as c:
        r = c.post("/gradio_api/call/run", json={"data": [[{"path": str(path), "meta": {"_type": "gradio.FileData"}}], ""]})
        events = c.get(f"/gradio_api/call/run/{r.json()['event_id']}").text
    assert "event: error" in events and "not uploaded by a user" in events and "findings-table" not in events


def test_chunked_uploads_without_a_length_are_refused(served, client):
    cfg, _ = served
    _, path = _film(cfg)
    body = path.read_bytes()
    r = client.post("/api/predict", content=iter([body]), headers={"content-type": "application/octet-stream"})
    assert r.status_code == 411 and "Content-Length" in r.json()["error"]
