"""The web server bounds what it accepts (issue 27, web cases): request bodies by declared and by
streamed size, concurrent decoding, Gradio uploads (a size limit, cleared after each answer), view
names; a corrupt film is an error, never a black film scored; the page says how far to trust the
model and when it contradicts itself, and shows the films as read."""
import asyncio
import base64
import io
import json
import re
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
from fastapi.testclient import TestClient  # noqa: E402

from cxrlt.data.datasets import read_split, resolve_dataset  # noqa: E402
from cxrlt.serve.app import build_app  # noqa: E402
from cxrlt.serve.predictor import Predictor  # noqa: E402

MB = 2**20


@pytest.fixture(scope="module")
def predictor(served):
    return Predictor(served[1])


def _film(cfg, i=0):
    spec = resolve_dataset(cfg.data)
    df = read_split(spec, "test", labels="none")
    return spec.image_root / df[spec.path_col].iloc[i]


def _asgi_post(app, path: str, declared: int | None, chunks, content_type: str):
    """POST through the ASGI interface: `declared` Content-Length (None: none), the body from the
    iterator `chunks`. Returns (status, body bytes, bytes the app read)."""
    read = 0
    it = iter(chunks)
    sent = []

    async def receive():
        nonlocal read
        try:
            c = next(it)
        except StopIteration:
            return {"type": "http.request", "body": b"", "more_body": False}
        read += len(c)
        return {"type": "http.request", "body": c, "more_body": True}

    async def send(msg):
        sent.append(msg)

    headers = [(b"content-type", content_type.encode()), (b"host", b"testserver")]
    if declared is not None:
        headers.append((b"content-length", str(declared).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1234), "server": ("testserver", 80)}

    async def go():
        await asyncio.wait_for(app(scope, receive, send), 120)
    asyncio.run(go())
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"), read


def _multipart(total: int, chunk: int = MB):
    """A multipart body with one `files` part of about `total` bytes, made lazily (chunks reused)."""
    head = b'--B\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\nContent-Type: image/png\r\n\r\n'
    yield head
    block = b"\0" * chunk
    for _ in range(total // chunk):
        yield block
    yield b"\r\n--B--\r\n"


# -- 11: request bodies and concurrent decoding are bounded -----------------------------------------

def test_a_declared_oversized_body_is_refused_before_it_is_read(predictor):
    app = build_app(predictor)
    status, body, read = _asgi_post(app, "/api/predict", 200 * MB, _multipart(200 * MB), "multipart/form-data; boundary=B")
    assert status == 413 and read == 0, (status, body[:200], read)
    assert "limit of 64 MB" in json.loads(body)["error"]


def test_a_body_streaming_past_the_limit_is_cut_off(predictor):
    app = build_app(predictor)      # declares 1 kB, sends 100 MB: reading stops at the limit
    status, body, read = _asgi_post(app, "/api/predict", 1000, _multipart(100 * MB), "multipart/form-data; boundary=B")
    assert status == 413 and read <= 64 * MB + 2 * MB, (status, body[:200], read)
    assert "streamed" in json.loads(body)["error"]


def test_at_most_two_api_requests_decode_at_once(served, predictor, monkeypatch):
    import httpx

    data = _film(served[0]).read_bytes()
    live, peak, lock = [0], [0], threading.Lock()
    decode = Predictor.decode

    def slow_decode(self, uploads):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        try:
            time.sleep(0.5)
            return decode(self, uploads)
        finally:
            with lock:
                live[0] -= 1

    monkeypatch.setattr(Predictor, "decode", slow_decode)
    app = build_app(predictor)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await asyncio.gather(*[c.post("/api/predict", files=[("files", ("a.png", data))], timeout=120)
                                          for _ in range(5)])
    answers = asyncio.run(go())
    assert all(r.status_code == 200 for r in answers) and peak[0] <= 2, peak


# -- 12: Gradio uploads: a size limit, and the store emptied by each answer -------------------------

def test_a_declared_60_gb_upload_to_the_page_is_refused_at_once(predictor):
    app = build_app(predictor)
    t0 = time.time()
    status, body, read = _asgi_post(app, "/gradio_api/upload", 60 * 2**30, _multipart(8 * MB),
                                    "multipart/form-data; boundary=B")
    assert status == 413 and read == 0 and time.time() - t0 < 5, (status, body[:200], read)


def _page_call(c, store, name: str, data: bytes, views: str = ""):
    up = c.post("/gradio_api/upload", files=[("files", (name, data))])
    assert up.status_code == 200, up.text
    r = c.post("/gradio_api/call/run", json={"data": [[{"path": up.json()[0], "meta": {"_type": "gradio.FileData"}}],
                                                      views]})
    return c.get(f"/gradio_api/call/run/{r.json()['event_id']}").text


def _stored(store):
    return sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())


def test_the_upload_store_is_empty_after_each_answer(served, predictor, tmp_path, monkeypatch):
    store = tmp_path / "store"
    store.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(store))
    path = _film(served[0])
    with TestClient(build_app(predictor)) as c:
        assert c.app is not None
        events = _page_call(c, store, path.name, path.read_bytes())
        assert "findings-table" in events, events[-500:]
        assert _stored(store) == []                       # the film and the heatmap: nothing left
        events = _page_call(c, store, "notes.png", b"these are not pixels")
        assert "event: error" in events and "cannot read it as a chest film" in events
        assert _stored(store) == []                       # a rejected file neither


# -- 13: unknown view names -------------------------------------------------------------------------

def test_unknown_view_names_are_a_400_naming_the_accepted_ones(served, predictor):
    path = _film(served[0])
    c = TestClient(build_app(predictor))
    r = c.post("/api/predict", files=[("files", (path.name, path.read_bytes()))], data={"views": "FOO"})
    assert r.status_code == 400 and "unknown view 'FOO'" in r.json()["error"], r.text
    assert "PA" in r.json()["error"] and "LATERAL" in r.json()["error"]
    r = c.post("/api/predict", files=[("files", (path.name, path.read_bytes()))], data={"views": "pa"})
    assert r.status_code == 200


# -- 3w: a corrupt or truncated film is an error, never a black film scored -------------------------

def _big_png(side: int) -> bytes:
    a = (np.add.outer(np.arange(side), np.arange(side)) % 256).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def test_a_truncated_14000_px_png_is_an_error_on_the_api_and_the_page(predictor, tmp_path, monkeypatch):
    data = _big_png(14000)
    cut = data[: len(data) // 2]
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    with TestClient(build_app(predictor)) as c:
        r = c.post("/api/predict", files=[("files", ("cut.png", cut))])
        assert r.status_code == 422 and "truncated" in r.json()["error"], r.text
        events = _page_call(c, tmp_path, "cut.png", cut)
    assert "event: error" in events and "truncated" in events and "findings-table" not in events, events[-400:]


# -- 5: how far to trust it, and a contradiction said in words --------------------------------------

def test_the_answer_says_how_far_to_trust_the_model(served, predictor):
    _, out = served
    m = json.loads((out / "metrics.json").read_text())
    path = _film(served[0])
    c = TestClient(build_app(predictor))
    j = c.post("/api/predict", files=[("files", (path.name, path.read_bytes()))]).json()
    t = j["trust"]
    chance = np.mean([v["positives"] / m["n_images"] for v in m["per_class"].values() if v["AP"] is not None])
    assert t["oof_mAP"] == pytest.approx(m["mAP"]) and t["chance_mAP"] == pytest.approx(chance)
    from cxrlt.serve.app import findings_html

    page = findings_html(j)
    assert f"OOF mAP {m['mAP']:.3f}" in page and f"{chance:.3f}" in page and "prevalence" in page


def test_no_finding_positive_beside_findings_is_said_in_words(served, predictor, monkeypatch):
    monkeypatch.setattr(predictor, "thresholds", {k: 0.0 for k in predictor.labels})   # everything positive
    path = _film(served[0])
    j = TestClient(build_app(predictor)).post("/api/predict", files=[("files", (path.name, path.read_bytes()))]).json()
    assert len(j["warnings"]) == 1 and "'No Finding' and 25 finding(s)" in j["warnings"][0]
    from cxrlt.serve.app import findings_html

    assert "Warning:" in findings_html(j) and "contradict" in findings_html(j)
    monkeypatch.setattr(predictor, "thresholds", {k: (0.0 if k != "No Finding" else 1.1) for k in predictor.labels})
    j = TestClient(build_app(predictor)).post("/api/predict", files=[("files", (path.name, path.read_bytes()))]).json()
    assert j["warnings"] == []


# -- 15: the film as read -------------------------------------------------------------------------------

def test_the_page_shows_each_film_as_it_was_read(served, predictor, tmp_path, monkeypatch):
    from cxrlt.data.images import decode_gray

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    path = _film(served[0])
    film = decode_gray(path)
    inverted = Image.fromarray(255 - film)
    buf = io.BytesIO()
    inverted.save(buf, "PNG")
    with TestClient(build_app(predictor)) as c:
        events = _page_call(c, tmp_path, "inverted.png", buf.getvalue())
    assert f"inverted.png: {film.shape[1]}x{film.shape[0]} as read" in events
    thumb = re.search(r'alt=\\?"inverted.png\\?" src=\\?"data:image/png;base64,([A-Za-z0-9+/=]+)', events)
    assert thumb, events[-500:]
    img = np.array(Image.open(io.BytesIO(base64.b64decode(thumb.group(1)))))
    assert img.ndim == 2 and abs(float(img.mean()) - float(255 - film.mean())) < 3     # the inversion is visible
