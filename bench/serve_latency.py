"""Per-film latency of the web page's JSON API (decode + resize + every fold model with the recipe's
TTA + the findings) for one film, against the bare models' forward passes on the already-resized
input (the floor), same device, same run. An experiment of fold models is made for the run unless
--experiment names a trained one.

Several experiments (`--experiment A --experiment B`, or `--experiment A,B`; without --experiment,
`--model a,b` makes one per model) are measured in the same run on the same film, their requests
taken in turns (A, B, A, B, ...: a change in the machine's load hits all alike), and a table gives
each one's models served, parameters (one model, and every model a prediction runs: a student
beside its teacher), API and bare milliseconds per film, and both as a ratio to the first
experiment (the reference). The parameters are counted from the loaded models and checked against
cxrlt.sizes (what stage 08 reports, read from the best.pt files).

    python bench/serve_latency.py --film-size 1024                             # demo-sized models
    python bench/serve_latency.py --experiment experiments/demo --film-size 1024
    python bench/serve_latency.py --experiment experiments/teacher_blend --experiment experiments/student
    python bench/serve_latency.py --model convnext_small,test_resnet --size 384 --folds 1
"""
import argparse
import io
import tempfile
import time
from pathlib import Path

from _common import ROOT, device_line


def make_experiment(work: Path, model: str, size: int, folds: int) -> Path:
    """Untrained fold models of `model` at `size` px with the demo recipe's prediction settings."""
    from cxrlt.config import load_config, save_resolved
    from cxrlt.data.datasets import LABELS_2023
    from cxrlt.models.checkpoint import save
    from cxrlt.models.factory import arch_record, create_model, input_stats

    cfg = load_config(ROOT / "experiments" / "demo.yaml", [f"model.name={model}", f"cache.size={size}"])
    exp = work / model
    for k in range(folds):
        net = create_model(cfg.model, len(LABELS_2023))
        mean, std = input_stats(net)
        save(dict(model=net.state_dict(), arch=arch_record(cfg.model, LABELS_2023, size, "stretch", mean, std),
                  mean=mean, std=std), exp / f"fold{k}" / "best.pt")
        (exp / f"fold{k}" / "done.json").write_text("{}")     # a finished fold (the server serves no other)
    save_resolved(cfg, exp / "config.yaml")
    return exp


def split_list(values) -> list[str]:
    """Repeated and comma-separated values, in order."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def served_params(pred) -> tuple[int, int]:
    """(parameters of one model of each member, summed; of every model the predictor runs, summed),
    counted from the loaded models."""
    def count(net):
        return sum(p.numel() for p in net.parameters())

    one = sum(count(next(iter(m.models.values()))[0]) for m, _ in pred.members)
    return one, sum(count(net) for m, _ in pred.members for net, _ in m.models.values())


def bare_forwards(pred, film) -> None:
    """The floor: every fold model's forwards (the recipe's views) on the resized film, nothing else."""
    import torch

    from cxrlt.models.inference import image_input

    views = ["none", *pred.members[0][0].settings.views]
    with torch.no_grad():
        for m, _w in pred.members:
            for net, arch in m.models.values():
                x = m.batch([film], arch, pred.device)
                f = image_input(arch["mean"], arch["std"], False)
                for v in views:
                    if arch["kind"] == "study_fusion":     # a study of one film
                        one = torch.ones(1, 1, dtype=torch.bool)
                        net(f(x, v)[0][None], torch.zeros(1, 1, dtype=torch.long), one)
                    else:
                        net(*f(x, v))


def table(rows: list[dict]) -> str:
    """The markdown table of the experiments, ratios to the first (the reference)."""
    ref = rows[0]
    head = ["experiment", "models", "params/model", "params served", "API ms/film", "API x ref", "bare ms",
            "bare x ref", "API / bare", "heatmap ms"]
    cells = [[r["name"], str(r["models"]), f"{r['params']:,}", f"{r['served']:,}", f"{r['api'] * 1000:.1f}",
              f"{r['api'] / ref['api']:.2f}", f"{r['bare'] * 1000:.1f}", f"{r['bare'] / ref['bare']:.2f}",
              f"{r['api'] / r['bare']:.2f}", f"{r['heat'] * 1000:.1f}"] for r in rows]
    w = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]

    def line(vals):
        return "| " + " | ".join(v.ljust(w[i]) if i == 0 else v.rjust(w[i]) for i, v in enumerate(vals)) + " |"

    rule = "|" + "|".join(("-" * (n + 1) + ":") if i else ("-" * (n + 2)) for i, n in enumerate(w)) + "|"
    return "\n".join([line(head), rule, *map(line, cells)])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", action="append", default=[],
                   help="an experiment folder (a blend too); repeat it or give a comma list: the first is the reference")
    p.add_argument("--model", default="test_resnet",
                   help="without --experiment: the fold models' timm name (a comma list: one experiment each)")
    p.add_argument("--size", type=int, default=128, help="without --experiment: their input size")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--film-size", type=int, default=1024, help="side of the uploaded PNG film")
    p.add_argument("--repeats", type=int, default=20)
    a = p.parse_args()
    import numpy as np
    import torch
    from fastapi.testclient import TestClient
    from PIL import Image

    from cxrlt.serve.app import build_app
    from cxrlt.serve.predictor import Predictor
    from cxrlt.sizes import model_size

    with tempfile.TemporaryDirectory(prefix="cxrlt-serve-") as work:
        if a.experiment:
            exps = [(Path(e).name, Path(e)) for e in split_list(a.experiment)]
        else:
            exps = [(f"{m} (untrained, {a.size} px)", make_experiment(Path(work), m, a.size, a.folds))
                    for m in split_list([a.model])]
        rng = np.random.default_rng(0)
        film = (rng.random((a.film_size, a.film_size)) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(film).save(buf, "PNG")
        files = [("files", ("film.png", buf.getvalue()))]
        rows = []
        for name, exp in exps:
            pred = Predictor(exp)
            client = TestClient(build_app(pred))
            for _ in range(3):     # warm-up (torch's first calls from a thread are slow, the more so under load)
                assert client.post("/api/predict", files=files).status_code == 200
                bare_forwards(pred, film)
            one, served = served_params(pred)
            rows.append(dict(name=name, exp=exp, pred=pred, client=client, models=pred.n_models, params=one,
                             served=served, size=model_size(pred.dir), api=0.0, bare=0.0, heat=0.0))
        # in turns, the same film: A, B, A, B, ... for the API, then for the bare forwards
        for _ in range(a.repeats):
            for r in rows:
                t = time.perf_counter()
                res = r["client"].post("/api/predict", files=files)
                r["api"] += (time.perf_counter() - t) / a.repeats
                r["label"] = res.json()["findings"][0]["label"]
        for _ in range(a.repeats):
            for r in rows:
                t = time.perf_counter()
                bare_forwards(r["pred"], film)
                r["bare"] += (time.perf_counter() - t) / a.repeats
        n_heat = max(1, a.repeats // 4)
        for _ in range(n_heat):
            for r in rows:
                t = time.perf_counter()
                r["client"].post("/api/heatmap", files=files, data={"label": r["label"]})
                r["heat"] += (time.perf_counter() - t) / n_heat
        print(f"device: {device_line()}; torch threads {torch.get_num_threads()}")
        for r in rows:
            views = ["none", *r["pred"].members[0][0].settings.views]
            print(f"experiment: {r['exp']} ({r['models']} fold model(s), TTA views {views}); film {a.film_size} px PNG")
            print(f"API /api/predict: {r['api'] * 1000:.0f} ms per film; bare forwards {r['bare'] * 1000:.0f} ms; "
                  f"ratio {r['api'] / r['bare']:.2f}x (decode, resize, HTTP, findings); heatmap {r['heat'] * 1000:.0f} ms")
            s = r["size"]
            if (s.params, s.served, s.models) != (r["params"], r["served"], r["models"]):
                print(f"WARNING {r['name']}: cxrlt.sizes (stage 08's params) says {s.params} / {s.served} parameters "
                      f"in {s.models} model(s); the loaded models hold {r['params']} / {r['served']} in {r['models']}")
        print(f"\nreference: {rows[0]['name']}; mean of {a.repeats} requests each, taken in turns "
              f"(heatmap: {n_heat}); params: one model of each member / every model a prediction runs\n")
        print(table(rows))


if __name__ == "__main__":
    main()
