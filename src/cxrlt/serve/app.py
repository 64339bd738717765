"""The web page (Gradio, mounted at /) and the JSON API (FastAPI) over one loaded Predictor.

- `GET /`: upload the films of one study, see every finding sorted by probability with the tuned
  threshold, the decision, the group and the OOF AP, pick a finding for its Grad-CAM heatmap.
- `POST /api/predict`: multipart, one or more `files` (one study), optional `views` (comma-separated,
  one per file, e.g. `PA,LATERAL`) -> {"findings": [{"label", "probability", "threshold",
  "positive", "group", "oof_ap"}, ...] sorted by probability, "images", "models", "seconds"}.
- `POST /api/heatmap`: the same files and a `label` -> PNG of the heatmap over the first film.
- `GET /api/info`: the experiment, its labels and models.
A bad file is HTTP 4xx with {"error": "..."} and the server goes on serving.

Uploads to the API are parsed in memory (multipart parts are never spooled to disk; a request
without a Content-Length is refused); uploads of the page go through Gradio's upload store, which
`serve()` puts in shared memory (/dev/shm when it exists) and which drops files after 10 minutes.
Only files uploaded to the page can be named through it (Gradio's check, switched on here).
"""
from __future__ import annotations

import html
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from cxrlt.serve.predictor import InputError, Predictor

MAX_UPLOAD = 512 * 2**20    # bytes of one request kept in memory at most


def findings_html(result: dict) -> str:
    """The findings table of the page (plain HTML: sortable by eye, testable by a browser)."""
    rows = []
    for f in result["findings"]:
        t = "-" if f["threshold"] is None else f"{f['threshold']:.3f}"
        pos = "" if f["positive"] is None else ("POSITIVE" if f["positive"] else "")
        ap = "-" if f.get("oof_ap") is None else f"{f['oof_ap']:.3f}"
        style = ' style="background:#fde2e2;font-weight:600"' if f["positive"] else ""
        rows.append(f"<tr{style}><td>{html.escape(f['label'])}</td><td>{f['probability']:.3f}</td><td>{t}</td>"
                    f"<td>{pos}</td><td>{f['group'] or '-'}</td><td>{ap}</td></tr>")
    head = ("<tr><th>finding</th><th>probability</th><th>tuned threshold</th><th>decision</th><th>group</th>"
            "<th>OOF AP</th></tr>")
    return f'<table id="findings-table" style="width:100%;border-collapse:collapse">{head}{"".join(rows)}</table>'


def build_app(predictor: Predictor):
    """The FastAPI app with the API routes and the Gradio page mounted at /."""
    import gradio as gr
    from starlette.formparsers import MultiPartParser

    MultiPartParser.spool_max_size = MAX_UPLOAD      # keep every uploaded part in memory
    app = FastAPI(title=f"cxrlt: {predictor.name}")

    async def _uploads(request: Request):
        size = request.headers.get("content-length")
        if size is None:      # a chunked body could be of any size: refuse rather than count on trust
            raise InputError("send the upload with a Content-Length (no chunked transfer)", 411)
        if int(size) > MAX_UPLOAD:
            raise InputError(f"request over {MAX_UPLOAD // 2**20} MB", 413)
        try:
            form = await request.form(max_files=64, max_part_size=MAX_UPLOAD)
        except Exception as e:
            raise InputError(f"not a multipart upload ({str(e)[:120]})") from None
        files = [(f.filename or "file", await f.read()) for f in form.getlist("files") if hasattr(f, "read")]
        if not files:
            raise InputError("no `files` in the upload")
        return files, form.get("views"), form

    @app.exception_handler(InputError)
    async def _bad_input(request, exc: InputError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.get("/api/info")
    def info():
        return dict(experiment=predictor.name, labels=predictor.labels, models=predictor.n_models,
                    thresholds=bool(predictor.thresholds))

    @app.post("/api/predict")
    async def api_predict(request: Request):
        files, views, _ = await _uploads(request)
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(predictor.predict, files, views)

    @app.post("/api/heatmap")
    async def api_heatmap(request: Request):
        files, views, form = await _uploads(request)
        from starlette.concurrency import run_in_threadpool

        img = await run_in_threadpool(predictor.heatmap, files, str(form.get("label") or ""), views)
        return Response(_png(img), media_type="image/png")

    ui = page(predictor)
    # Gradio checks that a file a client names was uploaded to it only once its app "has launched";
    # mounted on FastAPI it never is, and any server file could be read through the page's API
    ui.has_launched = True
    gr.mount_gradio_app(app, ui, path="/")
    return app


def _png(img: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", img[:, :, ::-1])
    return buf.tobytes()


def page(predictor: Predictor):
    import gradio as gr

    def read(files) -> list[tuple[str, bytes]]:
        out = []
        for f in files or []:
            p = Path(f if isinstance(f, str) else getattr(f, "name", f))
            try:
                out.append((p.name, p.read_bytes()))
            except OSError:
                raise InputError(f"{p.name}: the upload has expired; upload it again") from None
        return out

    def run(files, views):
        try:
            uploads = read(files)
            r = predictor.predict(uploads, views or None)
            top = r["findings"][0]["label"]
            heat = predictor.heatmap(uploads, top, views or None)
        except InputError as e:
            return f"**Error:** {html.escape(str(e))}", "", gr.update(), None, None
        status = (f"{r['images']} image(s), {r['models']} model(s), **{r['seconds']:.2f} s**; "
                  + ("positives are marked against the tuned thresholds (stage 06)" if predictor.thresholds
                     else "no tuned thresholds (run stage 06) - probabilities only"))
        return status, findings_html(r), gr.update(value=top), heat, uploads

    def rerun_heat(uploads, views, label):
        if not uploads or not label:
            return None
        try:
            return predictor.heatmap(uploads, label, views or None)
        except InputError:
            return None

    # uploads older than 10 minutes are deleted from the upload store (checked every 5 minutes)
    with gr.Blocks(title=f"cxrlt: {predictor.name}", analytics_enabled=False, delete_cache=(300, 600)) as ui:
        gr.Markdown(f"## {predictor.name}: chest X-ray findings\nUpload the films of one study (PNG, JPEG or "
                    f"DICOM). {predictor.n_models} model(s), {len(predictor.labels)} findings. A research tool, "
                    "not a diagnosis.")
        files = gr.File(file_count="multiple", label="Films of one study", elem_id="films")
        views = gr.Textbox(label="Views, one per file in order (optional, e.g. PA,LATERAL)", elem_id="views")
        go = gr.Button("Predict", variant="primary", elem_id="predict")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            with gr.Column(scale=3, min_width=480):
                table = gr.HTML(elem_id="findings")
            with gr.Column(scale=2):
                pick = gr.Dropdown(choices=predictor.labels, label="Heatmap for", elem_id="pick")
                heat = gr.Image(label="Where the model looked (Grad-CAM)", elem_id="heatmap", type="numpy")
        kept = gr.State()
        go.click(run, [files, views], [status, table, pick, heat, kept])
        pick.input(rerun_heat, [kept, views, pick], heat)
    return ui


def serve(experiment: str, host: str = "127.0.0.1", port: int = 7860, folds=None, device=None) -> None:
    """Load the experiment once and serve the page and the API until interrupted."""
    import uvicorn

    shm = Path("/dev/shm")
    store = Path(tempfile.mkdtemp(prefix="cxrlt-serve-", dir=shm if shm.is_dir() else None))
    os.environ.setdefault("GRADIO_TEMP_DIR", str(store))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    predictor = Predictor(experiment, folds=folds, device=device)
    print(f"serving {predictor.name}: {predictor.n_models} model(s) on {predictor.device}, "
          f"{len(predictor.labels)} findings; open http://{host}:{port}/ (API: POST /api/predict)", flush=True)
    try:
        uvicorn.run(build_app(predictor), host=host, port=port, log_level="warning")
    finally:
        shutil.rmtree(store, ignore_errors=True)
