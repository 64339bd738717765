"""The web page (Gradio, mounted at /) and the JSON API (FastAPI) over one loaded Predictor.

- `GET /`: upload the films of one study, see every finding sorted by probability with the tuned
  threshold, the decision, the group and the OOF AP, pick a finding for its Grad-CAM heatmap.
- `POST /api/predict`: multipart, one or more `files` (one study), optional `views` (comma-separated,
  one per file, e.g. `PA,LATERAL`; an unknown name is a 400 naming the accepted ones) ->
  {"findings": [{"label", "probability", "threshold", "positive", "group", "oof_ap"}, ...] sorted by
  probability, "images", "models", "seconds", "films" (each film's decoded size), "trust" (the
  experiment's OOF mAP, a blend's honest mAP, chance = the mean prevalence), "warnings"}.
- `POST /api/heatmap`: the same files and a `label` -> PNG of the heatmap over the first film.
- `GET /api/info`: the experiment, its labels, models, accepted views and trust figures.
A bad file is HTTP 4xx with {"error": "..."} and the server goes on serving.

Every request body is bounded (`max_upload` bytes, serve.py --max-upload-mb): a declared
Content-Length over it is a 413 before a byte of the body is read, and a body that streams past it
is cut off with a 413 (BodyLimit, around the API and the page alike; Gradio's own max_file_size is
set to the same bound). API uploads are parsed in memory (never spooled to disk; a request without
a Content-Length is refused) by at most `max_concurrent` requests at once (serve.py
--max-concurrent): the others wait, their bodies unread. Uploads of the page go through Gradio's
upload store, which `serve()` puts in shared memory (/dev/shm when it exists): each answer deletes
the films it read (rejected ones too), and thumbnails and heatmaps are sent inline, never stored.
Only files uploaded to the page can be named through it (Gradio's check, switched on here).
"""
from __future__ import annotations

import asyncio
import base64
import html
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from cxrlt.serve.predictor import InputError, Predictor

MAX_UPLOAD = 64 * 2**20     # bytes of one request at most (serve.py --max-upload-mb)
MAX_CONCURRENT = 2          # API requests read and decoded at once (serve.py --max-concurrent)


class BodyLimit:
    """ASGI middleware: a request whose declared Content-Length is over `limit` bytes is a 413 before
    its body is read; one whose body streams past `limit` is cut off (the app sees a disconnect) and
    answered 413."""

    def __init__(self, app, limit: int = MAX_UPLOAD):
        self.app, self.limit = app, int(limit)

    def _refusal(self, size: str) -> tuple[int, dict]:
        return 413, {"error": f"request of {size} is over this server's limit of {self.limit / 2**20:g} MB "
                              f"(serve.py --max-upload-mb)"}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                return await _reply(send, 400, {"error": "Content-Length is not a number"})
            if n > self.limit:
                return await _reply(send, *self._refusal(f"{n / 2**20:,.0f} MB (declared)"))
        seen, over, started = 0, False, False

        async def counted():
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    over = True
                    return {"type": "http.disconnect"}
            return msg

        async def guarded(msg):
            nonlocal started
            if over:           # the app's answer to the cut-off body is replaced by the 413
                return
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not over:
                raise
        if over and not started:
            await _reply(send, *self._refusal(f"over {self.limit / 2**20:g} MB (streamed)"))


async def _reply(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": data})


def trust_line(trust: dict) -> str:
    """How far to trust the model, in one line of the page."""
    if trust.get("oof_mAP") is None:
        return "How far to trust it: no OOF figures (metrics.json) for this experiment."
    chance = trust.get("chance_mAP")
    line = (f"How far to trust it: OOF mAP {trust['oof_mAP']:.3f} over {trust.get('n_images')} images"
            + (f", against {chance:.3f} for scores that know nothing (chance: the mean prevalence)" if chance else ""))
    if trust.get("honest_mAP") is not None and abs(trust["honest_mAP"] - trust["oof_mAP"]) > 1e-12:
        line += f"; honest blend figure (weights fitted without the scored fold) {trust['honest_mAP']:.3f}"
    return line + "."


def findings_html(result: dict) -> str:
    """The findings table of the page (plain HTML: sortable by eye, testable by a browser), after
    the trust line and any warning."""
    notes = [f'<p id="trust">{html.escape(trust_line(result.get("trust") or {}))}</p>']
    notes += [f'<p class="warning" style="color:#a00;font-weight:600">Warning: {html.escape(w)}</p>'
              for w in result.get("warnings") or []]
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
    return "".join(notes) + f'<table id="findings-table" style="width:100%;border-collapse:collapse">{head}{"".join(rows)}</table>'


def _img_tag(img: np.ndarray, alt: str, side: int | None = None) -> str:
    """An <img> with the picture inline (a PNG data URL): nothing is written to the upload store."""
    import cv2

    if side and max(img.shape[:2]) > side:
        s = side / max(img.shape[:2])
        img = cv2.resize(img, (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))),
                         interpolation=cv2.INTER_AREA)
    data = base64.b64encode(_png(img)).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def thumbs_html(names: list[str], films: list[np.ndarray]) -> str:
    """What was read: each film after decoding (before the model's resize), small, with its size."""
    cells = [f'<figure style="display:inline-block;margin:4px">{_img_tag(f, n, 192)}<figcaption>'
             f'{html.escape(n)}: {f.shape[1]}x{f.shape[0]} as read</figcaption></figure>' for n, f in zip(names, films)]
    return ('<div id="thumbs-read"><p>What the models read (check the window and that bone is light):</p>'
            + "".join(cells) + "</div>")


def build_app(predictor: Predictor, max_upload: int = MAX_UPLOAD, max_concurrent: int = MAX_CONCURRENT):
    """The FastAPI app with the API routes and the Gradio page mounted at /; every request body at
    most `max_upload` bytes, at most `max_concurrent` API requests read and decoded at once."""
    import gradio as gr
    from starlette.formparsers import MultiPartParser
    from starlette.requests import ClientDisconnect

    if max_upload < 1 or max_concurrent < 1:
        raise ValueError("max_upload and max_concurrent must be >= 1")
    MultiPartParser.spool_max_size = max_upload      # keep every uploaded part in memory
    app = FastAPI(title=f"cxrlt: {predictor.name}")
    app.add_middleware(BodyLimit, limit=max_upload)
    busy = asyncio.Semaphore(max_concurrent)

    async def _uploads(request: Request):
        size = request.headers.get("content-length")
        if size is None:      # a chunked body could be of any size: refuse rather than count on trust
            raise InputError("send the upload with a Content-Length (no chunked transfer)", 411)
        try:
            form = await request.form(max_files=64, max_part_size=max_upload)
        except ClientDisconnect:
            raise
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
                    thresholds=bool(predictor.thresholds), views=predictor.known_views, trust=predictor.trust,
                    max_upload_mb=max_upload / 2**20)

    @app.post("/api/predict")
    async def api_predict(request: Request):
        from starlette.concurrency import run_in_threadpool

        async with busy:      # the body is read only once its turn comes
            files, views, _ = await _uploads(request)
            return await run_in_threadpool(predictor.predict, files, views)

    @app.post("/api/heatmap")
    async def api_heatmap(request: Request):
        from starlette.concurrency import run_in_threadpool

        async with busy:
            files, views, form = await _uploads(request)
            img = await run_in_threadpool(predictor.heatmap, files, str(form.get("label") or ""), views)
        return Response(_png(img), media_type="image/png")

    ui = page(predictor)
    # Gradio checks that a file a client names was uploaded to it only once its app "has launched";
    # mounted on FastAPI it never is, and any server file could be read through the page's API
    ui.has_launched = True
    gr.mount_gradio_app(app, ui, path="/", max_file_size=max_upload)
    return app


def _png(img: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", img if img.ndim == 2 else img[:, :, ::-1])
    return buf.tobytes()


def _forget(paths: list[Path]) -> None:
    """Delete uploaded files from Gradio's upload store (and the folder Gradio made for each)."""
    for p in paths:
        p.unlink(missing_ok=True)
        try:
            p.parent.rmdir()       # <store>/<hash>/<name>: the hash folder, when empty
        except OSError:
            pass


def _films_input(gr, **kw):
    """gr.File handing the function each uploaded file's path in the upload store, and nothing more:
    Gradio's own gr.File (type filepath) also leaves an empty NamedTemporaryFile in the store for every
    file it hands over (gradio/components/file.py), which no answer could clear. (Patched on the
    instance: a gr.File subclass would make Gradio write a .pyi stub beside this module.)"""
    import types

    from gradio.utils import NamedString

    films = gr.File(**kw)
    films._process_single_file = types.MethodType(lambda self, f: NamedString(f.path), films)
    return films


def page(predictor: Predictor):
    import gradio as gr

    def read(files) -> tuple[list[tuple[str, bytes]], list[Path]]:
        out, paths = [], [Path(f if isinstance(f, str) else getattr(f, "name", f)) for f in files or []]
        for p in paths:
            try:
                out.append((p.name, p.read_bytes()))
            except OSError:
                raise InputError(f"{p.name}: the upload has expired; upload it again") from None
        return out, paths

    def run(files, views):
        paths = []
        try:
            uploads, paths = read(files)
            films = predictor.decode(uploads)
            r = predictor.predict_films(films, views or None)
            top = r["findings"][0]["label"]
            heat = predictor.heatmap_films(films, top, views or None)
        except InputError as e:
            raise gr.Error(html.escape(str(e)), print_exception=False) from None
        finally:      # the answer is made: the films leave the upload store (as the README says)
            _forget(paths)
        status = (f"{r['images']} image(s), {r['models']} model(s), **{r['seconds']:.2f} s**; "
                  + ("positives are marked against the tuned thresholds (stage 06)" if predictor.thresholds
                     else "no tuned thresholds (run stage 06) - probabilities only"))
        kept = (films, views or None)
        return (status, findings_html(r), thumbs_html([n for n, _ in uploads], films), gr.update(value=top),
                _heat_html(heat, top), kept, gr.update(value=None))

    def rerun_heat(kept, label):
        if not kept or not label:
            return ""
        films, views = kept
        try:
            return _heat_html(predictor.heatmap_films(films, label, views), label)
        except InputError as e:
            return f"<p>{html.escape(str(e))}</p>"

    # uploads not cleared by an answer (never submitted) are deleted after 10 minutes (checked every 5)
    with gr.Blocks(title=f"cxrlt: {predictor.name}", analytics_enabled=False, delete_cache=(300, 600)) as ui:
        gr.Markdown(f"## {predictor.name}: chest X-ray findings\nUpload the films of one study (PNG, JPEG or "
                    f"DICOM). {predictor.n_models} model(s), {len(predictor.labels)} findings. A research tool, "
                    f"not a diagnosis. {trust_line(predictor.trust)}")
        files = _films_input(gr, file_count="multiple", label="Films of one study", elem_id="films")
        views = gr.Textbox(label=f"Views, one per file in order (optional; {', '.join(predictor.known_views)})",
                           elem_id="views")
        go = gr.Button("Predict", variant="primary", elem_id="predict")
        status = gr.Markdown(elem_id="status")
        thumbs = gr.HTML(elem_id="thumbs")
        with gr.Row():
            with gr.Column(scale=3, min_width=480):
                table = gr.HTML(elem_id="findings")
            with gr.Column(scale=2):
                pick = gr.Dropdown(choices=predictor.labels, label="Heatmap for", elem_id="pick")
                heat = gr.HTML(elem_id="heatmap")
        kept = gr.State()
        go.click(run, [files, views], [status, table, thumbs, pick, heat, kept, files])
        pick.input(rerun_heat, [kept, pick], heat)
    return ui


def _heat_html(img: np.ndarray, label: str) -> str:
    return (f"<p>Where the model looked for {html.escape(label)} (Grad-CAM)</p>"
            + _img_tag(img, f"Grad-CAM heatmap of {label}"))


def serve(experiment: str, host: str = "127.0.0.1", port: int = 7860, folds=None, device=None,
          max_upload: int = MAX_UPLOAD, max_concurrent: int = MAX_CONCURRENT) -> None:
    """Load the experiment once and serve the page and the API until interrupted."""
    import uvicorn

    shm = Path("/dev/shm")
    store = Path(tempfile.mkdtemp(prefix="cxrlt-serve-", dir=shm if shm.is_dir() else None))
    os.environ.setdefault("GRADIO_TEMP_DIR", str(store))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    # uvicorn re-raises the SIGTERM it stopped on once it has shut down: with the default handler the
    # process would die there and leave the upload store behind; exiting through Python removes it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        predictor = Predictor(experiment, folds=folds, device=device)
        print(f"serving {predictor.name}: {predictor.n_models} model(s) on {predictor.device}, "
              f"{len(predictor.labels)} findings; open http://{host}:{port}/ (API: POST /api/predict)", flush=True)
        uvicorn.run(build_app(predictor, max_upload, max_concurrent), host=host, port=port, log_level="warning")
    finally:
        shutil.rmtree(store, ignore_errors=True)
