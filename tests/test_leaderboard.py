"""Stage 07 --upload / --status against local stand-ins of Codabench and CodaLab v1 (tests/fake_platforms.py):
the bytes the storage receives, the payloads, the status sequences, 401/403, a quota refusal, a 5xx
then success, a scoring failure, a poll killed and resumed; log.csv, the OOF-vs-leaderboard plot and
the tracking lines; no credential in any file written."""
import base64
import json

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from fake_platforms import PASSWORD, SIG, TOKEN, USER, Fake

from cxrlt.config import load_config
from cxrlt.data.datasets import resolve_dataset
from cxrlt.data.labels import LABELS_2023
from cxrlt.ensemble import leaderboard as lb
from cxrlt.ensemble.submission import make_submission
from cxrlt.errors import CxrltError
from cxrlt.stage import seal

DEMO = ROOT / "experiments" / "demo.yaml"
SECRETS = (PASSWORD, TOKEN, SIG, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())


@pytest.fixture
def fake(monkeypatch):
    for v in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
              "CODABENCH_TOKEN", "CODABENCH_USERNAME", "CODABENCH_PASSWORD", "CODALAB_USERNAME", "CODALAB_PASSWORD"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent/netrc")
    monkeypatch.setattr(lb, "BACKOFF", 0.0)
    f = Fake()
    yield f
    f.close()


def cfg_for(tmp_path, *more, exp="exp"):
    """The cxr-lt-2023 preset on a 12-image test set under tmp_path, outputs under tmp_path."""
    return load_config(DEMO, ["data.preset=cxr-lt-2023", f"data.input_dir={tmp_path / 'input'}",
                              f"output_dir={tmp_path / exp}", f"submission.dir={tmp_path / 'subs'}", f"submission.name={exp}",
                              "submit.poll_seconds=0", "submit.retries=2", *more])


def submission(tmp_path, seed=0, exp="exp", metrics=None, *more):
    """A sealed experiment (test.csv + metrics.json) and its stage-07 zip; returns (cfg, result)."""
    cfg = cfg_for(tmp_path, *more, exp=exp)
    spec = resolve_dataset(cfg.data)
    ids = [f"d{i:03d}" for i in range(12)]
    if not spec.test_csv.is_file():
        spec.test_csv.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"dicom_id": ids, "path": [f"p/{i}.jpg" for i in ids]}).to_csv(spec.test_csv, index=False)
    out = tmp_path / exp
    out.mkdir(parents=True, exist_ok=True)
    p = pd.DataFrame(np.random.default_rng(seed).random((12, len(LABELS_2023))), columns=LABELS_2023)
    p.insert(0, "dicom_id", ids)
    p.to_csv(out / "test.csv", index=False)
    seal(out / "metrics.json", metrics or {"mAP": 0.5}, [out / "test.csv"])
    return cfg, make_submission(cfg)


def codabench(fake, *more):
    return ["submit.platform=codabench", f"submit.url={fake.url}", "submit.phase=41", *more]


def codalab(fake, *more):
    return ["submit.platform=codalab", f"submit.url={fake.url}", "submit.competition=12599", "submit.phase=77", *more]


def log_of(tmp_path):
    return pd.read_csv(tmp_path / "subs" / "log.csv", dtype=str, keep_default_na=False)


def assert_no_secret(tmp_path, *texts):
    """No credential in any file under the test's output tree, nor in the given texts."""
    files = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert files
    for f in files:
        data = f.read_bytes()
        for s in SECRETS:
            assert s.encode() not in data, (f, s)
    for t in texts:
        for s in SECRETS:
            assert s not in t


def test_codabench_upload_bytes_payloads_retries_and_scores(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CODABENCH_USERNAME", USER)
    monkeypatch.setenv("CODABENCH_PASSWORD", PASSWORD)
    fake.fail = {"GET /api/can_make_submission/": [502], "PUT /storage/": [503]}      # a 5xx each, then success
    fake.plans = [dict(seq=["Submitted", "Running", "Scoring", "Finished"], scores={"mAP": 0.4123, "mAUC": 0.81})]
    cfg, r = submission(tmp_path, 0, "exp", None, *codabench(fake, "submit.tasks=[7]"))
    res = lb.upload(cfg, r["zip"])
    out = capsys.readouterr().out
    zip_bytes = r["zip"].read_bytes()
    assert list(fake.blobs.values()) == [zip_bytes]                        # the storage got the zip, byte for byte
    puts = [q for q in fake.requests if q[0] == "PUT" and q[1].startswith("/storage/")]
    assert len(puts) == 2 and puts[-1][2]["Content-Type"] == "application/zip"   # 503, then the retry
    (sub,) = fake.created("codabench")
    assert sub["payload"]["phase"] == "41" and sub["payload"]["tasks"] == "7" and sub["payload"]["data"] in fake.completed
    ds = [q for q in fake.requests if q[:2] == ("POST", "/api/datasets/")][0]
    form = dict(x.split("=") for x in ds[3].decode().split("&"))
    assert form["type"] == "submission" and form["file_size"] == str(len(zip_bytes))
    assert res["status"] == "Finished" and res["score"] == pytest.approx(0.4123)
    assert sub["polls"] == 4                                                 # Submitted, Running, Scoring, Finished
    assert "phase 41 'Development': at most 5 a day, 100 in all; the platform answers that you can submit" in out
    row = log_of(tmp_path).iloc[-1]
    assert (row.platform, row.phase, row.submission_id, row.lb_status) == ("codabench", "41", "100", "Finished")
    assert float(row.lb_score) == pytest.approx(0.4123) and json.loads(row.lb_scores) == {"mAP": 0.4123, "mAUC": 0.81}
    assert row.oof_mAP == "0.5" and row.sha256 == r["sha256"]
    assert_no_secret(tmp_path, out)


def test_codalab_upload_with_netrc_blob_headers_and_score(fake, tmp_path, monkeypatch, capsys):
    netrc = tmp_path / "home" / "netrc"
    netrc.parent.mkdir()
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    fake.plans = [dict(seq=["submitted", "running", "finished"], scores={"mAP": 0.3377})]
    cfg, r = submission(tmp_path, 1, "exp", None, *codalab(fake))
    res = lb.upload(cfg, r["zip"])
    out = capsys.readouterr().out
    assert list(fake.blobs.values()) == [r["zip"].read_bytes()]
    put = [q for q in fake.requests if q[0] == "PUT"][0]
    assert put[2]["x-ms-blob-type"] == "BlockBlob" and put[2]["x-ms-version"] == "2018-03-28"
    assert "Authorization" not in put[2]                                     # no credential to the storage
    (sub,) = fake.created("codalab")
    assert sub["payload"]["phase_id"] == "77" and sub["payload"]["id"].startswith("competition/12599/submission/")
    assert sub["payload"]["description"] == f"{r['zip'].name} sha256:{r['sha256'][:12]}"
    assert sub["payload"]["size"] == str(r["size"]) and sub["payload"]["type"] == "application/zip"
    assert res["status"] == "finished" and res["score"] == pytest.approx(0.3377)
    assert "quota: phase 1 'Development': at most 5 a day, 100 in all" in out
    row = log_of(tmp_path).iloc[-1]
    assert (row.platform, row.competition, row.submission_id, row.lb_status, row.lb_score) == \
        ("codalab", "12599", "500", "finished", "0.3377")
    netrc.unlink()                                                           # the test's own credential file
    assert_no_secret(tmp_path, out)


def test_refused_credentials_are_one_line_without_the_secret(fake, tmp_path, monkeypatch):
    cfg, r = submission(tmp_path, 2, "exp", None, *codabench(fake))
    with pytest.raises(CxrltError, match="no codabench credentials: set CODABENCH_TOKEN or CODABENCH_USERNAME and "
                                         "CODABENCH_PASSWORD in the environment, or add 'machine 127.0.0.1"):
        lb.upload(cfg, r["zip"])
    monkeypatch.setenv("CODABENCH_USERNAME", USER)
    monkeypatch.setenv("CODABENCH_PASSWORD", "wrong-" + PASSWORD)
    with pytest.raises(CxrltError, match=r"api-token-auth/: authentication refused \(400: Unable to log in with "
                                         r"provided credentials.\)") as e1:
        lb.upload(cfg, r["zip"])
    monkeypatch.setenv("CODABENCH_TOKEN", "stale-" + TOKEN)                  # a token the platform no longer knows
    with pytest.raises(CxrltError, match=r"/api/phases/41/: authentication refused \(401: Invalid token.\)") as e2:
        lb.upload(cfg, r["zip"])
    ccfg = cfg_for(tmp_path, *codalab(fake))
    monkeypatch.setenv("CODALAB_USERNAME", USER)
    monkeypatch.setenv("CODALAB_PASSWORD", "wrong-" + PASSWORD)
    with pytest.raises(CxrltError, match=r"authentication refused \(403: Invalid username/password.\); check "
                                         r"CODALAB_USERNAME/CODALAB_PASSWORD or the netrc machine 127.0.0.1") as e3:
        lb.upload(ccfg, r["zip"])
    monkeypatch.setenv("CODALAB_PASSWORD", PASSWORD)
    fake.proxy_401 = True
    with pytest.raises(CxrltError, match=r"authentication refused \(401: ") as e4:
        lb.upload(ccfg, r["zip"])
    assert not fake.blobs and not fake.submissions
    for e in (e1, e2, e3, e4):
        assert "\n" not in str(e.value) and PASSWORD not in str(e.value) and TOKEN not in str(e.value)
    assert set(log_of(tmp_path)["lb_status"] if "lb_status" in log_of(tmp_path) else [""]) == {""}


def test_quota_refusals_send_nothing_and_leave_the_file_sendable(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("CODABENCH_TOKEN", TOKEN)
    fake.can, fake.reason = False, "Reached maximum allowed submissions for today for this phase"
    cfg, r = submission(tmp_path, 3, "exp", None, *codabench(fake))
    with pytest.raises(CxrltError, match=r"codabench phase 41 'Development' refuses a new submission: Reached maximum "
                                         r"allowed submissions for today for this phase \(at most 5 a day, 100 in all\); "
                                         r"nothing was sent"):
        lb.upload(cfg, r["zip"])
    assert not any(q[1] == "/api/datasets/" for q in fake.requests) and not fake.blobs
    # CodaLab has no quota question: the refusal is the submission's 403, after the blob went up
    monkeypatch.setenv("CODALAB_USERNAME", USER)
    monkeypatch.setenv("CODALAB_PASSWORD", PASSWORD)
    fake.day_left = 0
    ccfg = cfg_for(tmp_path, *codalab(fake))
    with pytest.raises(CxrltError, match=r"/api/competition/12599/submission: the submission refused \(403: The maximum "
                                         r"number of submissions this day have been reached.\)"):
        lb.upload(ccfg, r["zip"])
    assert log_of(tmp_path).iloc[-1].lb_status == ""                       # not sent: no duplicate guard against it
    fake.day_left, fake.plans = 1, [dict(seq=["finished"], scores={"mAP": 0.2})]
    assert lb.upload(ccfg, r["zip"])["score"] == pytest.approx(0.2)


def test_5xx_until_the_retries_run_out_is_one_line(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("CODABENCH_TOKEN", TOKEN)
    fake.fail = {"POST /api/datasets/": [503, 502, 504]}
    cfg, r = submission(tmp_path, 4, "exp", None, *codabench(fake))
    with pytest.raises(CxrltError, match=r"^POST http://127.0.0.1:\d+/api/datasets/: answer 504 \(Service Unavailable\) "
                                         r"after 3 tries$"):
        lb.upload(cfg, r["zip"])
    assert not fake.submissions and log_of(tmp_path).iloc[-1].lb_status == ""


def test_scoring_failure_keeps_the_platforms_error_text(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CODABENCH_TOKEN", TOKEN)
    err = "Traceback (most recent call last):\n  ValueError: expected 27 columns, got 26"
    fake.plans = [dict(seq=["Submitted", "Running", "Failed"], error=err)]
    cfg, r = submission(tmp_path, 5, "exp", None, *codabench(fake))
    res = lb.upload(cfg, r["zip"])
    assert res["status"] == "Failed" and res["score"] is None
    row = log_of(tmp_path).iloc[-1]
    assert row.lb_status == "Failed" and row.lb_score == "" and row.lb_error.endswith(
        "ValueError: expected 27 columns, got 26")
    assert "submission 100 Failed: Traceback (most recent call last): ValueError: expected 27 columns" in \
        capsys.readouterr().out


def test_poll_killed_then_resumed_with_status_never_resends(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CODABENCH_TOKEN", TOKEN)
    fake.plans = [dict(seq=["Submitted", "Running", "Running", "Finished"], scores={"mAP": 0.377})]
    cfg, r = submission(tmp_path, 6, "exp", None, *codabench(fake))

    def killed(s):
        raise KeyboardInterrupt
    monkeypatch.setattr(lb.time, "sleep", killed)                           # Ctrl-C during the first wait
    with pytest.raises(KeyboardInterrupt):
        lb.upload(cfg, r["zip"])
    monkeypatch.undo()
    monkeypatch.setenv("CODABENCH_TOKEN", TOKEN)
    monkeypatch.setattr(lb, "BACKOFF", 0.0)
    out = capsys.readouterr().out
    assert "poll interrupted; submission 100 is on the platform (never sent again); resume with: src/07_make_submission.py" \
        in out and " --status " in out
    row = log_of(tmp_path).iloc[-1]
    assert (row.submission_id, row.lb_status) == ("100", "Submitted")
    with pytest.raises(CxrltError, match=r"was already sent to codabench phase 41 .*submission 100, Submitted.*--status "
                                         r"reads its score, --force sends it again"):
        lb.upload(cfg, r["zip"])                                             # no accidental second upload
    done = lb.status(cfg)
    assert [d["score"] for d in done] == [pytest.approx(0.377)] and len(fake.submissions) == 1
    assert len(fake.blobs) == 1
    row = log_of(tmp_path).iloc[-1]
    assert (row.lb_status, row.lb_score) == ("Finished", "0.377")
    assert lb.status(cfg) == [] and "nothing to resume" in capsys.readouterr().out
    # --force sends the same bytes again, in a row of its own
    fake.plans = [dict(seq=["Finished"], scores={"mAP": 0.377})]
    lb.upload(cfg, r["zip"], force=True)
    log = log_of(tmp_path)
    assert len(fake.submissions) == 2 and log.submission_id.tolist()[-2:] == ["100", "101"]


def test_wait_limit_leaves_the_upload_resumable(fake, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CODABENCH_TOKEN", TOKEN)
    fake.plans = [dict(seq=["Submitted", "Finished"], scores={"mAP": 0.31})]
    cfg, r = submission(tmp_path, 7, "exp", None, *codabench(fake, "submit.wait_minutes=0"))
    assert lb.upload(cfg, r["zip"])["final"] is False
    assert "submission 100 is Submitted; read it later with: src/07_make_submission.py --config" in capsys.readouterr().out
    assert lb.status(cfg)[0]["score"] == pytest.approx(0.31)


def test_dry_run_against_the_2023_preset_sends_nothing(tmp_path, stage, monkeypatch):
    import httpx

    def no_network(*a, **k):
        raise AssertionError("a network call in a dry run")
    monkeypatch.setattr(httpx.Client, "request", no_network)
    monkeypatch.setattr(httpx.Client, "send", no_network)
    cfg, r = submission(tmp_path, 8)
    ov = [f"data.input_dir={tmp_path / 'input'}", "data.preset=cxr-lt-2023", f"submission.dir={tmp_path / 'subs'}"]
    res = stage("src/07_make_submission.py", "--config", DEMO, "--upload", "--zip", r["zip"], "--dry-run", *ov)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "dry run: nothing is sent" in out and "platform     codalab (https://codalab.lisn.upsaclay.fr)" in out
    assert "competition  12599" in out and "phase        (not set: submit.phase=<id>" in out
    assert f"file         {r['zip']} ({r['size']} bytes, 12 rows, sha256 {r['sha256']})" in out or \
        f"({r['size']} bytes, 12 rows, sha256 {r['sha256']})" in out
    assert "POST https://codalab.lisn.upsaclay.fr/api/competition/12599/submission/sas" in out
    res = stage("src/07_make_submission.py", "--config", DEMO, "--upload", "--zip", r["zip"], "--dry-run", *ov,
                "submit.phase=9")
    assert "phase        9" in res.stdout and "submission?phase_id=9&description=" in res.stdout
    # without --dry-run and without credentials: one line naming the env vars and the netrc machine
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    for v in ("CODALAB_USERNAME", "CODALAB_PASSWORD"):
        monkeypatch.delenv(v, raising=False)
    res = stage("src/07_make_submission.py", "--config", DEMO, "--upload", "--zip", r["zip"], *ov, "submit.phase=9")
    assert res.returncode == 2 and "no codalab credentials: set CODALAB_USERNAME and CODALAB_PASSWORD" in res.stderr
    # a zip that fails --check is refused before anything else
    bad = tmp_path / "bad.csv"
    pd.read_csv(r["csv"]).drop(index=3).to_csv(bad, index=False)
    res = stage("src/07_make_submission.py", "--config", DEMO, "--upload", "--zip", bad, "--dry-run", *ov)
    assert res.returncode == 2 and "1 test ids are missing" in res.stderr


def test_preset_targets_and_recipe_overrides(tmp_path):
    t = lb.target(load_config(DEMO, ["data.preset=cxr-lt-2024-task2"]))
    assert (t.platform, t.url, t.competition, t.phase) == ("codalab", lb.CODALAB, 18603, None)
    assert lb.target(load_config(DEMO, ["data.preset=cxr-lt-2024-task3"])).competition == 18604
    t = lb.target(load_config(DEMO, ["data.preset=cxr-lt-2026", "submit.phase=12"]))
    assert (t.platform, t.url, t.competition, t.phase) == ("codabench", lb.CODABENCH, None, 12)
    t = lb.target(load_config(DEMO, ["data.preset=cxr-lt-2023", "submit.platform=codabench",
                                     "submit.url=https://example.org/", "submit.competition=3"]))
    assert (t.platform, t.url, t.competition) == ("codabench", "https://example.org", 3)
    t = lb.target(load_config(DEMO, ["data.preset=cxr-lt-2023", "submit.platform=codabench"]))   # not the preset's
    assert (t.platform, t.url, t.competition) == ("codabench", lb.CODABENCH, None)
    with pytest.raises(CxrltError, match="submit.platform is not set and data.preset has no leaderboard"):
        lb.require(lb.target(load_config(DEMO, [])))
    with pytest.raises(CxrltError, match="submit.phase is not set"):
        lb.require(lb.target(load_config(DEMO, ["data.preset=cxr-lt-2023"])))
    with pytest.raises(CxrltError, match="submit.platform must be one of codabench, codalab"):
        load_config(DEMO, ["submit.platform=kaggle"])


def test_three_scored_submissions_fill_the_log_plot_and_tracking(fake, tmp_path, monkeypatch, capsys):
    """Local figures chosen so that the per-fold mean orders the leaderboard exactly (Spearman 1),
    the development mAP half-way (0.5) and the pooled OOF wrongly (-0.5); submission b's pooled OOF
    gain (+0.05) lost 0.02 on the board and is flagged."""
    monkeypatch.setenv("CODABENCH_TOKEN", TOKEN)
    figs = [("a", 0.50, 0.48, 0.40, 0.30), ("b", 0.55, 0.47, 0.42, 0.28), ("c", 0.53, 0.52, 0.45, 0.35)]
    for i, (name, oof, fold, dev, score) in enumerate(figs):
        fake.plans.append(dict(seq=["Running", "Finished"], scores={"mAP": score}))
        m = {"mAP": oof, "folds": {"mean": {"mAP": fold}}, "development": {"mAP": dev},
             "settings": {"oof_normalise": "rank"}}
        cfg, r = submission(tmp_path, 10 + i, name, m, *codabench(fake))
        lb.upload(cfg, r["zip"])
    fake.plans.append(dict(seq=["Failed"], error="scoring program crashed"))   # not scored: not compared
    cfg, r = submission(tmp_path, 20, "d", {"mAP": 0.6}, *codabench(fake))
    lb.upload(cfg, r["zip"])
    log = log_of(tmp_path)
    assert log.file.tolist() == ["a.zip", "b.zip", "c.zip", "d.zip"]
    assert log.lb_score.tolist() == ["0.3", "0.28", "0.35", ""]
    assert log.oof_mAP_fold_mean.tolist()[:3] == ["0.48", "0.47", "0.52"] and log.dev_mAP.tolist()[:3] == ["0.4", "0.42", "0.45"]
    assert log.oof_mAP_normalised.tolist() == ["0.5", "0.55", "0.53", ""]      # normalised only where it was
    rep = lb.track(tmp_path / "subs" / "log.csv", plot=True)
    assert rep["n"] == 3 and rep["best"] == "oof_mAP_fold_mean"
    assert rep["rho"]["oof_mAP_fold_mean"][0] == pytest.approx(1.0)
    assert rep["rho"]["dev_mAP"][0] == pytest.approx(0.5) and rep["rho"]["oof_mAP"][0] == pytest.approx(-0.5)
    assert len(rep["flags"]) == 1 and rep["flags"][0].startswith("b.zip: pooled OOF mAP +0.0500 over a.zip, leaderboard -0.0200")
    assert (tmp_path / "subs" / "oof_vs_lb.png").stat().st_size > 10_000
    assert "tracked the leaderboard best so far: per-fold mean mAP (Spearman +1.00 over 3 submissions" in \
        "\n".join(rep["lines"])
    # run_all.sh's closing summary prints the same lines
    from cxrlt.ensemble import summary

    monkeypatch.setattr(summary, "project_path", lambda p: tmp_path / "subs" if p == "submissions" else tmp_path / p)
    capsys.readouterr()
    summary.main(["--recipes", "a", "--final", "c"])
    text = capsys.readouterr().out
    assert "tracked the leaderboard best so far: per-fold mean mAP" in text and "FLAG b.zip" in text
    assert_no_secret(tmp_path, text)


def test_run_all_passes_upload_to_stage_07_only(tmp_path):
    """`bash run_all.sh --upload` adds --upload to stage 07's call and to no other stage."""
    from conftest import project_copy
    from test_run_all import TINY, run_all

    proj = project_copy(tmp_path)
    _, calls = run_all(proj, "--only", "07", "--upload", "submit.phase=41", *TINY)
    assert calls[0] == "src/07_make_submission.py --config experiments/demo_blend.yaml --upload submit.phase=41 " + \
        " ".join(TINY)
    assert [c for c in calls if "--upload" in c] == calls[:1]
    _, calls = run_all(proj, "--only", "07", *TINY)
    assert "--upload" not in calls[0]
