"""Local stand-ins (127.0.0.1 only, a thread of the test process) for the two leaderboard platforms:
the endpoints, payloads, status names and error answers of Codabench (codalab/codabench
src/apps/api/urls.py, views/datasets.py, views/submissions.py, serializers/submissions.py) and of
CodaLab Competitions v1 (codalab/codalab-competitions codalab/apps/api/routers.py,
views/competition_views.py, serializers.py), with the storage each hands a signed URL to.

Scripted per test: `fail` answers a request with given 5xx statuses first ({"PUT /storage": [503]}),
`plans` gives each created submission its status sequence, scores or error text, `can` / `reason`
the quota answer, `day_left` CodaLab's per-day limit. Everything received is recorded."""
from __future__ import annotations

import base64
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

USER, PASSWORD = "alice", "pw-Zq81-secret"
TOKEN = "tok-7f3c9a1e5b"
SIG = "sig=SAS9secret"


class Fake:
    def __init__(self):
        self.fail: dict[str, list[int]] = {}
        self.plans: list[dict] = []
        self.can, self.reason = True, None
        self.day_left = 5
        self.proxy_401 = False
        self.requests: list[tuple] = []          # (method, path, headers, body)
        self.blobs: dict[str, bytes] = {}        # storage key -> bytes received
        self.completed: set[str] = set()
        self.submissions: dict[int, dict] = {}   # id -> {payload, plan, polls}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def created(self, kind: str) -> list[dict]:
        return [s for s in self.submissions.values() if s["kind"] == kind]


def _handler(fake: Fake):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, code, body=None):
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _form(self, body) -> dict:
            return {k: v if len(v) > 1 else v[0] for k, v in parse_qs(body.decode()).items()}

        def do_GET(self):
            self._route("GET")

        def do_POST(self):
            self._route("POST")

        def do_PUT(self):
            self._route("PUT")

        def _route(self, method):
            u = urlsplit(self.path)
            body = self._body()
            fake.requests.append((method, self.path, dict(self.headers), body))
            for prefix, codes in fake.fail.items():
                m, p = prefix.split(" ", 1)
                if m == method and u.path.startswith(p) and codes:
                    return self._send(codes.pop(0), {"detail": "Service Unavailable"})
            if u.path.startswith("/storage/") or u.path.startswith("/blob/"):
                return self._storage(method, u, body)
            if u.path.startswith("/api/competition/") or u.path.startswith("/api/submission/"):
                return self._codalab(method, u, body)
            return self._codabench(method, u, body)

        # ---- storage behind the signed URLs
        def _storage(self, method, u, body):
            if method != "PUT" or SIG not in u.query:
                return self._send(403, {"detail": "signature does not match"})
            if u.path.startswith("/blob/") and self.headers.get("x-ms-blob-type") != "BlockBlob":
                return self._send(400, {"detail": "x-ms-blob-type header missing"})
            fake.blobs[u.path] = body
            self._send(201 if u.path.startswith("/blob/") else 200)

        # ---- Codabench
        def _codabench(self, method, u, body):
            path = u.path
            if path == "/api/api-token-auth/" and method == "POST":
                f = self._form(body)
                if (f.get("username"), f.get("password")) == (USER, PASSWORD):
                    return self._send(200, {"token": TOKEN})
                return self._send(400, {"non_field_errors": ["Unable to log in with provided credentials."]})
            if self.headers.get("Authorization") != f"Token {TOKEN}":
                return self._send(401, {"detail": "Invalid token."})
            parts = [p for p in path.split("/") if p]
            if parts[:2] == ["api", "phases"] and method == "GET":
                return self._send(200, {"id": int(parts[2]), "name": "Development", "has_max_submissions": True,
                                        "max_submissions_per_day": 5, "max_submissions_per_person": 100,
                                        "tasks": ["6a1f0c"]})
            if parts[:2] == ["api", "can_make_submission"] and method == "GET":
                return self._send(200, {"can": fake.can, "reason": fake.reason})
            if path == "/api/datasets/" and method == "POST":
                f = self._form(body)
                if not f.get("file_size"):
                    return self._send(400, {"file_size": "This field is required."})
                if f.get("type") != "submission" or not f.get("request_sassy_file_name"):
                    return self._send(400, {"type": ["bad payload"]})
                key = str(uuid.uuid4())
                return self._send(201, {"key": key, "sassy_url": f"{fake.url}/storage/{key}?X-Amz-Date=1&{SIG}"})
            if parts[:3] == ["api", "datasets", "completed"] and method == "PUT":
                if f"/storage/{parts[3]}" not in fake.blobs:
                    return self._send(404, {"detail": "Not found."})
                fake.completed.add(parts[3])
                return self._send(200, {"key": parts[3]})
            if path == "/api/submissions/" and method == "POST":
                f = self._form(body)
                if f.get("data") not in fake.completed:
                    return self._send(400, {"data": ["Object with key does not exist."]})
                sid = 100 + len(fake.submissions)
                fake.submissions[sid] = dict(kind="codabench", payload=f, plan=fake.plans.pop(0), polls=0)
                return self._send(201, {"id": sid, "phase": int(f["phase"]), "status": "Submitting", "data": f["data"]})
            if parts[:2] == ["api", "submissions"] and len(parts) == 3 and method == "GET":
                s = fake.submissions.get(int(parts[2]))
                if s is None:
                    return self._send(404, {"detail": "Not found."})
                plan = s["plan"]
                status = plan["seq"][min(s["polls"], len(plan["seq"]) - 1)]
                s["polls"] += 1
                out = {"id": int(parts[2]), "status": status, "status_details": None, "scores": [],
                       "has_children": False, "children": []}
                if status == "Failed":
                    out["status_details"] = plan["error"]
                if status == "Finished":
                    out["scores"] = [{"id": 9 + i, "index": i, "score": f"{v}", "column_key": k}
                                     for i, (k, v) in enumerate(plan["scores"].items())]
                return self._send(200, out)
            return self._send(404, {"detail": "Not found."})

        # ---- CodaLab Competitions v1
        def _codalab(self, method, u, body):
            if fake.proxy_401:
                return self._send(401, {"detail": "Authentication credentials were not provided."})
            auth = self.headers.get("Authorization", "")
            ok = auth.startswith("Basic ") and base64.b64decode(auth[6:]).decode() == f"{USER}:{PASSWORD}"
            if not ok:        # DRF BasicAuthentication behind SessionAuthentication: 403, not 401
                return self._send(403, {"detail": "Invalid username/password."})
            parts = [p for p in u.path.split("/") if p]
            q = {k: v[0] for k, v in parse_qs(u.query).items()}
            if parts[:2] == ["api", "submission"] and parts[3:] == ["get_score"]:
                s = fake.submissions.get(int(parts[2]))
                if s is None or not s["plan"].get("scores"):
                    return self._send(404, {"detail": "Could not retrieve submission info!"})
                return self._send(200, {"score": next(iter(s["plan"]["scores"].values())), "status": "finished",
                                        "logs": {}})
            comp = parts[2]
            rest = parts[3:]
            if rest == ["phases"] and method == "GET":
                return self._send(200, [{"end_date": None, "phases": [
                    {"phasenumber": 1, "label": "Development", "max_submissions_per_day": 5, "max_submissions": 100},
                    {"phasenumber": 2, "label": "Test", "max_submissions_per_day": 1, "max_submissions": 3}]}])
            if rest == ["submission", "sas"] and method == "POST":
                name = f"competition/{comp}/submission/1/{uuid.uuid4()}.zip"
                return self._send(201, {"url": f"{fake.url}/blob/{name}?sv=2018-03-28&sr=b&{SIG}", "id": name,
                                        "version": "2018-03-28"})
            if rest == ["submission"] and method == "POST":
                f = self._form(body)
                if not q.get("phase_id"):
                    return self._send(403, {"detail": "Competition phase is closed."})
                if f"/blob/{f.get('id')}" not in fake.blobs:
                    return self._send(400, {"detail": "Invalid or missing tracking ID."})
                if fake.day_left <= 0:
                    return self._send(403, {"detail": "The maximum number of submissions this day have been reached."})
                fake.day_left -= 1
                sid = 500 + len(fake.submissions)
                fake.submissions[sid] = dict(kind="codalab", payload=dict(f, **q), plan=fake.plans.pop(0), polls=0)
                return self._send(201, {"id": sid, "description": q.get("description", ""), "status": "submitted",
                                        "submission_number": len(fake.submissions),
                                        "submitted_at": "2024-05-02T10:00:00"})
            if rest[:1] == ["submission"] and len(rest) == 2 and method == "GET":
                s = fake.submissions.get(int(rest[1]))
                if s is None:
                    return self._send(404, {"detail": "Not found."})
                plan = s["plan"]
                status = plan["seq"][min(s["polls"], len(plan["seq"]) - 1)]
                s["polls"] += 1
                return self._send(200, {"id": int(rest[1]), "status": status, "status_details": None,
                                        "exception_details": plan.get("error") if status == "failed" else None,
                                        "filename": "x.zip"})
            return self._send(404, {"detail": "Not found."})

    return H
