"""Stage 07 --upload / --status: send a checked submission zip to the leaderboard, read its score
back, and keep the leaderboard beside the local figures (docs/leaderboard.md).

Two platforms, each call following the platform's own source (file named at each call):
- Codabench (`codalab/codabench`): token login, the phase's quota answer, a dataset of type
  `submission` whose signed URL takes the zip, the submission, then its status until Finished /
  Failed / Cancelled, and its scores.
- CodaLab Competitions v1 (`codalab/codalab-competitions`, the CXR-LT 2023 and 2024 servers): HTTP
  Basic auth, a blob URL + tracking id, the PUT of the zip, the submission with `phase_id`, then its
  status until finished / failed / cancelled, and its score.

Guards, before anything is sent: the zip passes `--check`; the same sha256 already sent to that
platform and phase is refused (`--force` overrides); the platform's quota answer is shown and a
refusal stops the upload; `dry_run` prints the requests and sends nothing. Network failures and 5xx
answers are retried with backoff `submit.retries` times, then one line. The log row is marked before
the submission is created and gets the platform's id as soon as it answers, so a poll that was
interrupted is resumed with `--status` and never re-uploaded by accident.

Credentials come from the environment or ~/.netrc (`$NETRC`) only; they are never written, logged
or quoted in an error (every message passes through `_Http.scrub`).
"""
from __future__ import annotations

import hashlib
import json
import math
import netrc
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cxrlt.config import Config, rerun_hint
from cxrlt.errors import CxrltError, clip
from cxrlt.fileio import display_path, project_path, read_table, save_figure

CODALAB = "https://codalab.lisn.upsaclay.fr"
CODABENCH = "https://www.codabench.org"
# data.preset -> where its leaderboard lives. Competition ids of the CXR-LT pages on CodaLab
# (2023: ICCV CVAMD; 2024: MICCAI, one competition per task). Codabench needs only the phase id
# (CXR-LT 2026's is read from its page), so no competition id is set for it.
PRESET_TARGETS = {
    "cxr-lt-2023": dict(platform="codalab", url=CODALAB, competition=12599),
    "cxr-lt-2024-task1": dict(platform="codalab", url=CODALAB, competition=18601),
    "cxr-lt-2024-task2": dict(platform="codalab", url=CODALAB, competition=18603),
    "cxr-lt-2024-task3": dict(platform="codalab", url=CODALAB, competition=18604),
    "cxr-lt-2026": dict(platform="codabench", url=CODABENCH, competition=None),
    "cxr-lt-2026-task2": dict(platform="codabench", url=CODABENCH, competition=None),
}
ENV = {"codabench": ("CODABENCH_USERNAME", "CODABENCH_PASSWORD", "CODABENCH_TOKEN"),
       "codalab": ("CODALAB_USERNAME", "CODALAB_PASSWORD", None)}
BACKOFF = 1.0        # seconds: retry i waits BACKOFF * 2**i (at most 30 s); tests set 0
# log.csv columns this module writes (beside make_submission's own)
LB_COLUMNS = ("platform", "competition", "phase", "submission_id", "lb_status", "lb_score", "lb_scores",
              "lb_error", "uploaded", "scored")
# local figures a leaderboard score is compared with, as log.csv names them
LOCAL = {"oof_mAP": "pooled OOF mAP", "oof_mAP_fold_mean": "per-fold mean mAP",
         "oof_mAP_normalised": "normalised OOF mAP", "oof_mAP_honest": "honest blend OOF mAP",
         "dev_mAP": "development mAP"}


# ---------------------------------------------------------------- the target and the credentials
@dataclass
class Target:
    platform: str | None
    url: str | None
    competition: int | None
    phase: int | None
    tasks: list = field(default_factory=list)
    score_key: str | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.url or "").hostname or ""

    def where(self) -> str:
        comp = f" competition {self.competition}" if self.competition else ""
        return f"{self.platform} ({self.url}){comp} phase {self.phase if self.phase else '(not set)'}"


def target(cfg: Config) -> Target:
    """submit.* of the recipe, each null key filled from the preset's leaderboard (not when
    submit.platform names another platform than the preset's)."""
    s, preset = cfg.submit, PRESET_TARGETS.get(cfg.data.preset, {})
    if s.platform and preset.get("platform") != s.platform:
        preset = {}
    t = Target(platform=s.platform or preset.get("platform"), url=(s.url or preset.get("url") or "").rstrip("/") or None,
               competition=s.competition or preset.get("competition"), phase=s.phase, tasks=list(s.tasks or []),
               score_key=s.score_key)
    if t.platform and not t.url:
        t.url = CODALAB if t.platform == "codalab" else CODABENCH
    return t


def require(t: Target) -> None:
    """One line naming the key that is missing before anything can be sent."""
    if not t.platform:
        raise CxrltError("submit.platform is not set and data.preset has no leaderboard: set submit.platform="
                         "codabench|codalab, submit.url, submit.phase")
    if not urlsplit(t.url).scheme in ("http", "https") or not t.host:
        raise CxrltError(f"submit.url '{clip(t.url, 80)}' is not an http(s) address")
    if t.platform == "codalab" and not t.competition:
        raise CxrltError("submit.competition is not set: CodaLab needs the competition id (the number in "
                         "its page's address, /competitions/<id>)")
    if not t.phase:
        raise CxrltError(f"submit.phase is not set: the phase id changes per phase; read it on the {t.platform} "
                         f"competition page and pass submit.phase=<id>")


def credentials(t: Target) -> dict:
    """{username, password} or {token} from the environment, else from the netrc file ($NETRC or
    ~/.netrc, machine = the platform's host); one line naming both ways when neither has them."""
    user_env, pass_env, token_env = ENV[t.platform]
    if token_env and os.environ.get(token_env):
        return dict(token=os.environ[token_env], source=token_env)
    if os.environ.get(user_env) and os.environ.get(pass_env):
        return dict(username=os.environ[user_env], password=os.environ[pass_env], source=f"{user_env}/{pass_env}")
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    if path.is_file():
        try:
            found = netrc.netrc(str(path)).authenticators(t.host)
        except (netrc.NetrcParseError, OSError) as e:
            line = getattr(e, "lineno", None)
            raise CxrltError(f"{path}: not a readable netrc file" + (f" (line {line})" if line else "")) from None
        if found and found[0] and found[2]:
            return dict(username=found[0], password=found[2], source=f"{path} machine {t.host}")
    ways = f"{token_env} or " if token_env else ""
    raise CxrltError(f"no {t.platform} credentials: set {ways}{user_env} and {pass_env} in the environment, or add "
                     f"'machine {t.host} login <user> password <password>' to ~/.netrc (or the file $NETRC names)")


def _secrets(creds: dict) -> list[str]:
    return [v for k, v in creds.items() if k in ("token", "password") and v]


# ---------------------------------------------------------------- HTTP with retries
class _Http:
    """httpx with bounded retries: a network failure or a 5xx answer is retried `retries` times
    (backoff BACKOFF * 2**i s), then one CxrltError line. Messages show addresses without their
    query string (a signed URL's signature) and never a secret."""

    def __init__(self, t: Target, retries: int, secrets: list[str], out=print):
        import httpx

        self.httpx, self.t, self.retries, self.secrets, self.out = httpx, t, int(retries), secrets, out
        self.client = httpx.Client(timeout=httpx.Timeout(120.0, connect=20.0), follow_redirects=False)
        self.headers: dict = {}
        self.auth = None

    def scrub(self, text) -> str:
        s = str(text)
        for secret in self.secrets:
            s = s.replace(secret, "***")
        return clip(s, 300)

    @staticmethod
    def shown(url: str) -> str:
        u = urlsplit(url)
        return f"{u.scheme}://{u.netloc}{u.path}"

    def call(self, method: str, url: str, *, own: bool = True, resend: bool = True, **kw):
        """The response of `method url` (own: our platform's API, with its auth headers; else a
        storage URL, no auth). resend=False: only a connection that never opened is retried (a
        request that may have reached the server, e.g. the one creating the submission, is not)."""
        if not url.startswith("http"):
            url = self.t.url + url
        if own:
            kw["headers"] = {**self.headers, **kw.get("headers", {})}
            if self.auth is not None:
                kw["auth"] = self.auth
        last = ""
        for i in range(self.retries + 1):
            if i:
                time.sleep(BACKOFF * min(2 ** (i - 1), 30))
            try:
                r = self.client.request(method, url, **kw)
            except self.httpx.TransportError as e:
                last = f"{type(e).__name__} ({self.scrub(e) or 'no detail'})"
                if not resend and not isinstance(e, (self.httpx.ConnectError, self.httpx.ConnectTimeout)):
                    raise _Unsure(f"{method} {self.shown(url)}: {last}") from None
                continue
            if r.status_code >= 500:
                last = f"answer {r.status_code} ({self.detail(r)})"
                if not resend:
                    raise _Unsure(f"{method} {self.shown(url)}: {last}")
                continue
            return r
        raise CxrltError(f"{method} {self.shown(url)}: {last} after {self.retries + 1} tries")

    def detail(self, r) -> str:
        """The platform's own words for an answer: DRF's detail / reason / field errors, else its text."""
        try:
            body = r.json()
        except ValueError:
            return self.scrub(" ".join(r.text.split())[:200] or "empty answer")
        if isinstance(body, dict):
            for k in ("detail", "reason", "non_field_errors", "error", "data_file"):
                if body.get(k):
                    v = body[k]
                    return self.scrub(v[0] if isinstance(v, list) else v)
            if body:
                k, v = next(iter(body.items()))
                return self.scrub(f"{k}: {v[0] if isinstance(v, list) and v else v}")
        return self.scrub(body)

    def expect(self, r, ok, what: str):
        """`r` when its status is in `ok`; else one line: authentication refused (401/403 with an
        auth detail) names where credentials come from, anything else quotes the platform."""
        if r.status_code in ok:
            return r
        d = self.detail(r)
        if r.status_code == 401 or (r.status_code == 403 and any(w in d.lower() for w in (
                "credentials", "token", "username/password", "authentication", "not authenticated"))):
            self.refused(r)
        raise CxrltError(f"{r.request.method} {self.shown(str(r.request.url))}: {what} refused ({r.status_code}: {d})")

    def refused(self, r):
        """One line: the platform refused the credentials, and where they come from."""
        user_env, pass_env, token_env = ENV[self.t.platform]
        raise CxrltError(f"{r.request.method} {self.shown(str(r.request.url))}: authentication refused "
                         f"({r.status_code}: {self.detail(r)}); check {(token_env + ' or ') if token_env else ''}"
                         f"{user_env}/{pass_env} or the netrc machine {self.t.host}")

    def json(self, r, what: str) -> dict:
        try:
            body = r.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise CxrltError(f"{r.request.method} {self.shown(str(r.request.url))}: {what}: the answer is not "
                             f"the JSON object the platform sends ({r.status_code})")
        return body


    def created(self, r, where: str) -> str:
        """The id of the submission the answer `r` to `where` (the request creating it) reports;
        none is _Unsure: the submission may exist on the platform, so it is never sent again by itself."""
        sub = self.json(self.expect(r, (200, 201), "the submission"), "submission")
        if sub.get("id") is None:
            raise _Unsure(f"{where}: no submission id in the answer")
        return str(sub["id"])


class _Unsure(CxrltError):
    """The request creating the submission may have reached the platform: not retried."""


# ---------------------------------------------------------------- the two platforms
class Codabench:
    """Codabench's REST API (codalab/codabench)."""
    FINAL = ("Finished", "Failed", "Cancelled")

    def __init__(self, t: Target, http: _Http, creds: dict):
        self.t, self.http, self.creds = t, http, creds

    def plan(self, name: str, size: int) -> list[str]:
        u, p = self.t.url, self.t.phase or "<submit.phase>"
        tasks = f", tasks {self.t.tasks}" if self.t.tasks else " (all tasks of the phase)"
        return [("(no login call: the token of CODABENCH_TOKEN is sent as 'Authorization: Token ...')" if self.creds.get("token") else
                 f"POST {u}/api/api-token-auth/ (username, password) -> token"),
                f"GET  {u}/api/phases/{p}/ (name, max_submissions_per_day)",
                f"GET  {u}/api/can_make_submission/{p}/ (can, reason)",
                f"POST {u}/api/datasets/ (type submission, request_sassy_file_name {name}, file_size {size})",
                f"PUT  <its sassy_url> ({size} bytes, Content-Type application/zip)",
                f"PUT  {u}/api/datasets/completed/<key>/",
                f"POST {u}/api/submissions/ (phase {p}, data <key>{tasks})",
                f"GET  {u}/api/submissions/<id>/ every {{poll}} s until Finished / Failed / Cancelled; its scores"]

    def login(self) -> None:
        # rest_framework.authtoken's obtain_auth_token (src/apps/api/urls.py: api-token-auth/);
        # a wrong password answers 400 non_field_errors, a bad token later 401/403 detail
        if self.creds.get("token"):
            token = self.creds["token"]
        else:
            r = self.http.call("POST", "/api/api-token-auth/",
                               data=dict(username=self.creds["username"], password=self.creds["password"]))
            if r.status_code == 400:      # "Unable to log in with provided credentials."
                self.http.refused(r)
            token = self.http.json(self.http.expect(r, (200,), "login"), "login").get("token")
            if not token:
                raise CxrltError(f"POST {self.t.url}/api/api-token-auth/: no token in the answer")
            self.http.secrets.append(token)
        self.http.headers = {"Authorization": f"Token {token}"}

    def quota(self) -> list[str]:
        # GET /api/phases/<id>/ (src/apps/api/serializers/competitions.py PhaseSerializer) and
        # GET /api/can_make_submission/<phase>/ -> {can, reason} (src/apps/api/views/submissions.py,
        # phase.can_user_make_submissions: the per-day and per-person limits)
        p = self.t.phase
        r = self.http.call("GET", f"/api/phases/{p}/")
        phase = self.http.json(r, "phase") if r.status_code == 200 else {}
        if r.status_code in (401, 403):
            self.http.expect(r, (200,), "phase")
        limits = []
        if phase.get("max_submissions_per_day"):
            limits.append(f"at most {phase['max_submissions_per_day']} a day")
        if phase.get("max_submissions_per_person"):
            limits.append(f"{phase['max_submissions_per_person']} in all")
        name = f" '{clip(phase.get('name'), 60)}'" if phase.get("name") else ""
        lim = ", ".join(limits) if phase.get("has_max_submissions", bool(limits)) and limits else "no limit set"
        ans = self.http.json(self.http.expect(self.http.call("GET", f"/api/can_make_submission/{p}/"), (200,),
                                              "the quota question"), "quota")
        if not ans.get("can"):
            raise CxrltError(f"codabench phase {p}{name} refuses a new submission: "
                             f"{self.http.scrub(ans.get('reason') or 'no reason given')} ({lim}); nothing was sent")
        return [f"phase {p}{name}: {lim}; the platform answers that you can submit"]

    def send(self, name: str, data: bytes, sending) -> str:
        # POST /api/datasets/ (src/apps/api/views/datasets.py DataViewSet.create: file_size required,
        # answers 201 {key, sassy_url}; the storage quota answers 400 data_file)
        r = self.http.call("POST", "/api/datasets/", data=dict(type="submission", request_sassy_file_name=name,
                                                                file_name=name, file_size=str(len(data))))
        ds = self.http.json(self.http.expect(r, (201,), "the upload slot"), "datasets")
        if not ds.get("sassy_url") or not ds.get("key"):
            raise CxrltError(f"POST {self.t.url}/api/datasets/: no sassy_url / key in the answer")
        # the zip to the signed URL, as the site's client.js create_dataset (Azure storage wants its blob headers)
        headers = {"Content-Type": "application/zip"}
        if ".blob.core.windows.net" in ds["sassy_url"]:
            headers.update({"x-ms-blob-type": "BlockBlob", "x-ms-version": "2018-03-28"})
        if urlsplit(ds["sassy_url"]).query:      # the URL's signature is never shown
            self.http.secrets.append(urlsplit(ds["sassy_url"]).query)
        self.http.expect(self.http.call("PUT", ds["sassy_url"], own=False, content=data, headers=headers),
                         (200, 201), "the zip upload")
        # PUT /api/datasets/completed/<key>/ (src/apps/api/urls.py; views/datasets.py upload_completed)
        self.http.expect(self.http.call("PUT", f"/api/datasets/completed/{ds['key']}/"), (200,), "upload completion")
        # POST /api/submissions/ {phase, tasks, data: key} (views/submissions.py SubmissionViewSet.create,
        # serializers/submissions.py SubmissionCreationSerializer: tasks are task pks, data the dataset key)
        sending()
        payload = dict(phase=str(self.t.phase), data=ds["key"])
        if self.t.tasks:
            payload["tasks"] = [str(x) for x in self.t.tasks]
        r = self.http.call("POST", "/api/submissions/", data=payload, resend=False)
        return self.http.created(r, f"POST {self.t.url}/api/submissions/")

    def poll(self, sid: str) -> dict:
        # GET /api/submissions/<id>/ (serializers/submissions.py SubmissionSerializer: status, status_details,
        # scores [{index, score, column_key}], children); statuses in src/apps/competitions/models.py
        sub = self.http.json(self.http.expect(self.http.call("GET", f"/api/submissions/{sid}/"), (200,),
                                              "the status question"), "submission")
        status = str(sub.get("status") or "None")
        out = dict(status=status, final=status in self.FINAL, error=None, scores={})
        if status == "Failed" or status == "Cancelled":
            out["error"] = self.http.scrub(" ".join(str(sub.get("status_details") or status).split()))
        if status == "Finished":
            scores = list(sub.get("scores") or [])
            for child in sub.get("children") or []:       # a multi-task submission scores per task
                c = self.http.json(self.http.expect(self.http.call("GET", f"/api/submissions/{child}/"), (200,),
                                                    "a task's status"), "submission")
                scores += [dict(s, column_key=f"{s.get('column_key')}@{child}") for s in c.get("scores") or []]
            out["scores"] = {str(s.get("column_key") or s.get("index")): _num(s.get("score"))
                             for s in sorted(scores, key=lambda s: (s.get("index") is None, s.get("index") or 0))}
        return out


class CodaLab:
    """CodaLab Competitions v1's API (codalab/codalab-competitions, codalab/apps/api/routers.py)."""
    FINAL = ("finished", "failed", "cancelled")
    description = ""     # the submission's description on the platform: file name and sha256

    def __init__(self, t: Target, http: _Http, creds: dict):
        self.t, self.http, self.creds = t, http, creds
        self.base = f"/api/competition/{t.competition}"

    def plan(self, name: str, size: int) -> list[str]:
        u, b, p = self.t.url, self.base, self.t.phase or "<submit.phase>"
        return [f"GET  {u}{b}/phases/ (max_submissions_per_day), HTTP Basic auth",
                f"POST {u}{b}/submission/sas -> blob url + tracking id",
                f"PUT  <the blob url> ({size} bytes, x-ms-blob-type BlockBlob, Content-Type application/zip)",
                f"POST {u}{b}/submission?phase_id={p}&description=<file, sha256> (id, name {name}, type, size)",
                f"GET  {u}{b}/submission/<id> every {{poll}} s until finished / failed / cancelled",
                f"GET  {u}/api/submission/<id>/get_score"]

    def login(self) -> None:
        # DRF's default authentication (settings/base.py REST_FRAMEWORK sets none): Session + Basic
        import httpx

        self.http.auth = httpx.BasicAuth(self.creds["username"], self.creds["password"])

    def quota(self) -> list[str]:
        # GET /api/competition/<id>/phases/ (views/competition_views.py competitionphase_list,
        # serializers.py PhaseSerial: phasenumber, label, max_submissions_per_day; no phase id in it).
        # The per-day limit itself is enforced when the submission is created: 403 "The maximum number
        # of submissions this day have been reached." (apps/web/models.py CompetitionSubmission.save)
        r = self.http.call("GET", f"{self.base}/phases/")
        if r.status_code in (401, 403):
            self.http.expect(r, (200,), "the phase list")
        lines = []
        try:
            comps = r.json() if r.status_code == 200 else []
            for c in comps if isinstance(comps, list) else [comps]:
                for ph in (c or {}).get("phases") or []:
                    lines.append(f"phase {ph.get('phasenumber')} '{clip(ph.get('label'), 40)}': at most "
                                 f"{ph.get('max_submissions_per_day')} a day, {ph.get('max_submissions')} in all")
        except (ValueError, AttributeError, TypeError):
            lines = []
        return (lines or [f"the phase limits were not listed ({r.status_code})"]) + \
            ["CodaLab has no quota question: a refusal comes as the submission's 403, reported as is"]

    def send(self, name: str, data: bytes, sending) -> str:
        # POST /api/competition/<id>/submission/sas (CompetitionSubmissionSasApi: 201 {url, id[, version]})
        sas = self.http.json(self.http.expect(self.http.call("POST", f"{self.base}/submission/sas"), (200, 201),
                                              "the upload slot"), "sas")
        if not sas.get("url") or not sas.get("id"):
            raise CxrltError(f"POST {self.t.url}{self.base}/submission/sas: no url / id in the answer")
        if urlsplit(sas["url"]).query:
            self.http.secrets.append(urlsplit(sas["url"]).query)
        # PUT the zip with the blob headers (static/riot/submission-form.tag do_upload; x-ms-version
        # when the answer names one, static/js/main.js)
        headers = {"x-ms-blob-type": "BlockBlob", "Content-Type": "application/zip"}
        if sas.get("version"):
            headers["x-ms-version"] = str(sas["version"])
        self.http.expect(self.http.call("PUT", sas["url"], own=False, content=data, headers=headers),
                         (200, 201), "the zip upload")
        # POST /api/competition/<id>/submission?phase_id=..&description=.. with {id, name, type, size}
        # (competition_submission_create: 201 {id, status, ...}; 403 detail for a closed phase or a quota)
        sending()
        r = self.http.call("POST", f"{self.base}/submission", resend=False,
                           params=dict(phase_id=str(self.t.phase), description=self.description),
                           data=dict(id=sas["id"], name=name, type="application/zip", size=str(len(data))))
        return self.http.created(r, f"POST {self.t.url}{self.base}/submission")

    def poll(self, sid: str) -> dict:
        # GET /api/competition/<id>/submission/<pk> (CompetitionSubmissionSerial: status codename,
        # exception_details); statuses: apps/web/models.py CompetitionSubmissionStatus
        sub = self.http.json(self.http.expect(self.http.call("GET", f"{self.base}/submission/{sid}"), (200,),
                                              "the status question"), "submission")
        status = str(sub.get("status") or "unknown")
        out = dict(status=status, final=status in self.FINAL, error=None, scores={})
        if status in ("failed", "cancelled"):
            out["error"] = self.http.scrub(" ".join(str(sub.get("exception_details") or status).split()))
        if status == "finished":
            # GET /api/submission/<pk>/get_score (SubmissionScoreView: {score, status, logs}, the
            # leaderboard's first column; 404 when the submission has no leaderboard score)
            r = self.http.call("GET", f"/api/submission/{sid}/get_score")
            if r.status_code == 200:
                out["scores"] = {"score": _num(self.http.json(r, "score").get("score"))}
            else:
                out["error"] = f"finished, but no score to read ({r.status_code}: {self.http.detail(r)})"
        return out


PLATFORM_CLIENTS = {"codabench": Codabench, "codalab": CodaLab}


def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# ---------------------------------------------------------------- the log
def _rows(log: Path):
    import pandas as pd

    return read_table(log, dtype=str, keep_default_na=False) if log.is_file() else pd.DataFrame()


def _edit_row(log: Path, index: int, sha: str, values: dict) -> None:
    """Set `values` in row `index` of log.csv (still the row of `sha`) under the log's lock."""
    from cxrlt.ensemble.submission import update_log

    def edit(rows):
        for c in values:
            if c not in rows.columns:
                rows[c] = ""
        if index >= len(rows) or rows.at[index, "sha256"] != sha:
            raise CxrltError(f"{display_path(log)}: row {index + 2} is no longer the upload of sha256 {sha[:12]} "
                             f"(the log was edited by hand?); nothing recorded")
        for c, v in values.items():
            rows.at[index, c] = "" if v is None else str(v)
        return rows, None

    update_log(log, edit)


def _claim_row(log: Path, zip_path: Path, sha: str, t: Target) -> int:
    """The log row this upload is recorded in, marked `uploading` (`sending` just before the request
    that creates the submission, whose answer gives the row its submission id).
    A row of this sha256 not yet uploaded is used; else (a --force re-upload, or a zip not written by
    this stage) a new row copies the local figures of the newest row of that sha256."""
    from cxrlt.ensemble.submission import update_log

    def edit(rows):
        import pandas as pd

        for c in ("time", "file", "sha256", *LB_COLUMNS):
            if c not in rows.columns:
                rows[c] = ""
        same = rows.index[(rows["sha256"] == sha)].tolist()
        free = [i for i in same if not rows.at[i, "submission_id"] and rows.at[i, "lb_status"] in ("", "uploading")]
        if free:
            i = free[-1]
        else:
            new = (rows.loc[[same[-1]]].copy() if same else pd.DataFrame([dict(file=zip_path.name, sha256=sha)]))
            new["time"] = time.strftime("%Y-%m-%d %H:%M:%S")
            rows = pd.concat([rows, new], ignore_index=True).fillna("")
            i = len(rows) - 1
        for c in LB_COLUMNS:
            rows.at[i, c] = ""
        rows.at[i, "platform"], rows.at[i, "competition"] = t.platform, str(t.competition or "")
        rows.at[i, "phase"], rows.at[i, "lb_status"] = str(t.phase), "uploading"
        rows.at[i, "uploaded"] = time.strftime("%Y-%m-%d %H:%M:%S")
        return rows, i

    return update_log(log, edit)


def _earlier(rows, sha: str, t: Target):
    """The log rows that record this sha256 as sent (or being sent) to this platform and phase."""
    if rows.empty or "submission_id" not in rows.columns:
        return rows.iloc[0:0]
    hit = (rows["sha256"] == sha) & (rows["platform"] == t.platform) & (rows["phase"] == str(t.phase)) & \
        ((rows["submission_id"] != "") | (rows["lb_status"] == "sending"))
    return rows[hit]


# ---------------------------------------------------------------- upload, status
def upload(cfg: Config, zip_path: str | Path, force: bool = False, dry_run: bool = False, out=print) -> dict:
    """Send `zip_path` to the recipe's leaderboard and wait for its score (see the module's doc)."""
    from cxrlt.ensemble.submission import check_file

    zip_path = Path(zip_path)
    t = target(cfg)
    n = check_file(cfg, zip_path)                       # the --check guard, before anything else
    data = zip_path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    log = project_path(cfg.submission.dir) / "log.csv"
    earlier = _earlier(_rows(log), sha, t) if t.platform else []
    if dry_run:
        return _dry_run(cfg, t, zip_path, data, sha, n, earlier, force, out)
    require(t)
    if len(earlier) and not force:
        e = earlier.iloc[-1]
        state = f"submission {e['submission_id']}, {e['lb_status']}" if e["submission_id"] else \
            "interrupted while being submitted: check the competition page"
        raise CxrltError(f"{display_path(zip_path)} (sha256 {sha[:12]}) was already sent to {t.platform} phase "
                         f"{t.phase} on {e['uploaded'] or e['time']} ({state}); --status reads its score, "
                         f"--force sends it again")
    creds = credentials(t)
    http = _Http(t, cfg.submit.retries, _secrets(creds), out)
    client = PLATFORM_CLIENTS[t.platform](t, http, creds)
    if isinstance(client, CodaLab):
        client.description = f"{zip_path.name} sha256:{sha[:12]}"
    client.login()
    for line in client.quota():
        out(f"quota: {line}")
    row = _claim_row(log, zip_path, sha, t)
    out(f"uploading {display_path(zip_path)} ({len(data)} bytes, {n} rows, sha256 {sha[:12]}) to {t.where()}")
    sending = []

    def mark():
        sending.append(True)
        _edit_row(log, row, sha, dict(lb_status="sending"))

    try:
        sid = client.send(zip_path.name, data, mark)
    except _Unsure as e:
        _edit_row(log, row, sha, dict(lb_error=f"may have been submitted: {e}"))
        raise CxrltError(f"{e}; the platform may have created the submission: look at its page, then "
                         f"--status (if it is there) or --force (if not)") from None
    except CxrltError:      # refused (or never reached): nothing was submitted, the row is free again
        _edit_row(log, row, sha, {c: "" for c in LB_COLUMNS})
        raise
    except BaseException:   # interrupted: free the row unless the submission may already be created
        if not sending:
            _edit_row(log, row, sha, {c: "" for c in LB_COLUMNS})
        raise
    _edit_row(log, row, sha, dict(submission_id=sid, lb_status="submitted"))
    out(f"sent: {t.platform} submission {sid}; waiting for its score (at most {cfg.submit.wait_minutes:g} min)")
    return _wait(cfg, client, log, row, sha, sid, out)


def status(cfg: Config, out=print) -> list[dict]:
    """--status: poll every upload of the recipe's platform and phase that has no final status yet
    (an interrupted poll), record what the platform says; list what is pending otherwise."""
    t = target(cfg)
    log = project_path(cfg.submission.dir) / "log.csv"
    rows = _rows(log)
    if rows.empty or "submission_id" not in rows.columns:
        out(f"{display_path(log)}: no upload recorded yet")
        return []
    final = {s.lower() for s in (*Codabench.FINAL, *CodaLab.FINAL)}
    mine = (rows["platform"] == (t.platform or "")) & ((rows["phase"] == str(t.phase)) if t.phase else True)
    stuck = rows[mine & (rows["lb_status"] == "sending") & (rows["submission_id"] == "")]
    for i, r in stuck.iterrows():
        out(f"{r['file']} (row {i + 2}): interrupted while being submitted on {r['uploaded']}; look at the "
            f"competition page: if it is not there, --upload --force sends it again")
    pending = rows[mine & (rows["submission_id"] != "") & ~rows["lb_status"].str.lower().isin(final)]
    if pending.empty:
        last = rows[mine & (rows["submission_id"] != "")]
        out("nothing to resume" + (f"; newest: {last.iloc[-1]['file']} submission {last.iloc[-1]['submission_id']} "
                                   f"{last.iloc[-1]['lb_status']}, score {last.iloc[-1]['lb_score'] or 'none'}"
                                   if len(last) else ""))
        return []
    require(t)
    creds = credentials(t)
    http = _Http(t, cfg.submit.retries, _secrets(creds), out)
    client = PLATFORM_CLIENTS[t.platform](t, http, creds)
    client.login()
    results = []
    for i, r in pending.iterrows():
        out(f"resuming {r['file']}: {t.platform} submission {r['submission_id']} ({r['lb_status']})")
        results.append(_wait(cfg, client, log, int(i), r["sha256"], r["submission_id"], out))
    return results


def _wait(cfg, client, log: Path, row: int, sha: str, sid: str, out) -> dict:
    """Poll submission `sid` until a final status or submit.wait_minutes; record each new status,
    and the scores (or the error text) at the end. Ctrl-C leaves it resumable with --status."""
    every, limit = float(cfg.submit.poll_seconds), float(cfg.submit.wait_minutes) * 60
    t0, seen, polls = time.monotonic(), None, 0
    try:
        while True:
            st = client.poll(sid)
            polls += 1
            waited = time.monotonic() - t0
            if st["status"] != seen:
                seen = st["status"]
                _edit_row(log, row, sha, dict(lb_status=seen))
                out(f"  {_clock(waited)} submission {sid}: {seen}" +
                    ("" if st["final"] else f" (next look in {every:g} s, at most {_clock(limit)} in all)"))
            if st["final"]:
                break
            if waited + every > limit:
                out(f"stopped waiting after {_clock(waited)} ({polls} polls); submission {sid} is {seen}; read it "
                    f"later with: {rerun_hint(cfg, '07_make_submission.py', '--status')}")
                return dict(submission_id=sid, status=seen, final=False)
            time.sleep(every)
    except KeyboardInterrupt:
        out(f"poll interrupted; submission {sid} is on the platform (never sent again); resume with: "
            f"{rerun_hint(cfg, '07_make_submission.py', '--status')}")
        raise
    key = cfg.submit.score_key
    scores = st["scores"]
    if key and scores and key not in scores:
        st["error"] = f"no score column '{key}' (columns: {', '.join(scores)})"
    score = scores.get(key) if key else next(iter(scores.values()), None)
    _edit_row(log, row, sha, dict(lb_status=st["status"], lb_score="" if score is None else f"{score:.6g}",
                                  lb_scores=json.dumps(scores) if scores else "", lb_error=st["error"] or "",
                                  scored=time.strftime("%Y-%m-%d %H:%M:%S")))
    if st["error"]:
        out(f"submission {sid} {st['status']}: {st['error']}")
    if score is not None:
        out(f"leaderboard score {score:.4f}" + (f" ({len(scores)} columns: " + ", ".join(
            f"{k} {v:.4f}" for k, v in scores.items() if v is not None) + ")" if len(scores) > 1 else ""))
    report = track(log, plot=True)
    for line in report["lines"]:
        out(line)
    return dict(submission_id=sid, status=st["status"], final=True, score=score, error=st["error"])


def _dry_run(cfg, t: Target, zip_path: Path, data: bytes, sha: str, n: int, earlier, force: bool, out) -> dict:
    """What would be sent, and the guards' answers that need no network; nothing is sent."""
    out("dry run: nothing is sent")
    out(f"  platform     {t.platform or '(not set: submit.platform)'} ({t.url or 'no url'})")
    out(f"  competition  {t.competition or ('(not needed)' if t.platform == 'codabench' else '(not set: submit.competition)')}")
    out(f"  phase        {t.phase or '(not set: submit.phase=<id>, from the competition page)'}")
    if t.platform == "codabench":
        out(f"  tasks        {t.tasks or 'all of the phase'}")
    out(f"  file         {display_path(zip_path)} ({len(data)} bytes, {n} rows, sha256 {sha})")
    if len(earlier):
        e = earlier.iloc[-1]
        out(f"  guard        already sent on {e['uploaded'] or e['time']} (submission {e['submission_id'] or '?'}): "
            + ("--force sends it again" if force else "refused without --force"))
    if t.platform:
        try:
            creds = credentials(t)
            out(f"  credentials  from {creds['source']}")
        except CxrltError as e:
            creds = {}
            out(f"  credentials  missing: {e}")
        client = PLATFORM_CLIENTS[t.platform](t, None, creds)
        for i, line in enumerate(client.plan(zip_path.name, len(data)), 1):
            out(f"  {i}. {line.replace('{poll}', format(float(cfg.submit.poll_seconds), 'g'))}")
    return dict(dry_run=True, platform=t.platform, competition=t.competition, phase=t.phase, file=zip_path,
                sha256=sha, size=len(data))


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# ---------------------------------------------------------------- OOF against the leaderboard
def track(log: str | Path, plot: bool = False) -> dict:
    """How the local figures have tracked the leaderboard: the scored submissions of the phase of
    the newest score, Spearman's rank correlation of each local figure with the score (3 or more
    submissions), the best-tracking figure, and the submissions whose local gain over the previous
    scored one did not show on the board. plot=True also writes oof_vs_lb.png beside the log."""
    import numpy as np

    log = Path(log)
    rows = _rows(log)
    empty = dict(lines=[], best=None, rho={}, flags=[], n=0, plot=None)
    if rows.empty or "lb_score" not in rows.columns:
        return empty
    scored = rows[rows["lb_score"] != ""].copy()
    if scored.empty:
        return empty
    last = scored.iloc[-1]
    scored = scored[(scored["platform"] == last["platform"]) & (scored["phase"] == last["phase"])]
    lb = scored["lb_score"].astype(float).to_numpy()
    figs = {c: scored[c].map(_num).to_numpy(dtype=float) for c in LOCAL if c in scored.columns}
    rho = {}
    for c, x in figs.items():
        ok = np.isfinite(x)
        if ok.sum() >= 3 and len(set(x[ok])) > 1 and len(set(lb[ok])) > 1:
            from scipy.stats import spearmanr

            rho[c] = (float(spearmanr(x[ok], lb[ok]).statistic), int(ok.sum()))
    best = max(rho, key=lambda c: (rho[c][0], rho[c][1])) if rho else None
    where = f"{last['platform']} phase {last['phase']}"
    lines = [f"leaderboard ({where}): {len(scored)} scored submission(s), newest {last['file']} {float(last['lb_score']):.4f}"]
    if best:
        lines.append(f"tracked the leaderboard best so far: {LOCAL[best]} (Spearman {rho[best][0]:+.2f} over "
                     f"{rho[best][1]} submissions; " + ", ".join(f"{LOCAL[c]} {r:+.2f}" for c, (r, _) in rho.items()
                                                                   if c != best) + ")")
    else:
        lines.append("tracked the leaderboard best so far: not known yet (rank correlation needs 3 scored "
                     "submissions with differing figures)")
    # flags: the headline figure (pooled OOF, what stage 07 prints) rose over the previous scored
    # submission and the board did not; what the best-tracking figure said is added
    figure = next((c for c in LOCAL if c in figs and np.isfinite(figs[c]).any()), None)
    flags = []
    if figure:
        x, prev = figs[figure], None
        for j in range(len(scored)):
            if not np.isfinite(x[j]):
                continue
            if prev is not None and x[j] > x[prev] and lb[j] <= lb[prev]:
                said = ""
                if best and best != figure and np.isfinite(figs[best][[j, prev]]).all():
                    said = f"; {LOCAL[best]}, which tracks best, said {figs[best][j] - figs[best][prev]:+.4f}"
                flags.append(f"{scored.iloc[j]['file']}: {LOCAL[figure]} {x[j] - x[prev]:+.4f} over "
                             f"{scored.iloc[prev]['file']}, leaderboard {lb[j] - lb[prev]:+.4f} (the local gain did "
                             f"not show on the board{said})")
            prev = j
    lines += [f"FLAG {f}" for f in flags]
    png = None
    if plot and figs:
        png = log.parent / "oof_vs_lb.png"
        _plot(png, figs, lb, rho, where, [clip(Path(f).stem, 16) for f in scored["file"]])
        lines.append(f"plot: {display_path(png)}")
    return dict(lines=lines, best=best, rho=rho, flags=flags, n=len(scored), plot=png)


def _plot(path: Path, figs: dict, lb, rho: dict, where: str, names: list) -> None:
    """One panel per local figure with values: each submission's figure against its leaderboard
    score, the line y = x, Spearman's rho in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    shown = {c: x for c, x in figs.items() if np.isfinite(x).any()}
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 4), squeeze=False)
    for ax, (c, x) in zip(axes[0], shown.items()):
        ok = np.isfinite(x)
        ax.scatter(x[ok], lb[ok], s=28, zorder=3)
        for j in np.flatnonzero(ok):
            ax.annotate(names[j], (x[j], lb[j]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        lo = float(min(x[ok].min(), lb[ok].min())) - 0.01
        hi = float(max(x[ok].max(), lb[ok].max())) + 0.01
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
        r = f"Spearman {rho[c][0]:+.2f}" if c in rho else "Spearman n/a (< 3)"
        ax.set(xlabel=LOCAL[c], ylabel="leaderboard score", title=f"{LOCAL[c]}: {r}", xlim=(lo, hi), ylim=(lo, hi))
        ax.legend(loc="upper left", fontsize=7)
    fig.suptitle(f"local figures against the leaderboard ({where})", fontsize=9)
    fig.tight_layout()
    save_figure(path, fig)
