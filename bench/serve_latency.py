"""Per-film latency of the web page's JSON API (decode + resize + every fold model with the recipe's
TTA + the findings) for one film, against the bare models' forward passes on the already-resized
input (the floor), same device, same run. An experiment of fold models is made for the run unless
--experiment names a trained one.

    python bench/serve_latency.py --film-size 1024                             # demo-sized models
    python bench/serve_latency.py --experiment experiments/demo --film-size 1024
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
    exp = work / "exp"
    for k in range(folds):
        net = create_model(cfg.model, len(LABELS_2023))
        mean, std = input_stats(net)
        save(dict(model=net.state_dict(), arch=arch_record(cfg.model, LABELS_2023, size, "stretch", mean, std),
                  mean=mean, std=std), exp / f"fold{k}" / "best.pt")
        (exp / f"fold{k}" / "done.json").write_text("{}")     # a finished fold (the server serves no other)
    save_resolved(cfg, exp / "config.yaml")
    return exp


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default=None)
    p.add_argument("--model", default="test_resnet", help="without --experiment: the fold models' timm name")
    p.add_argument("--size", type=int, default=128, help="without --experiment: their input size")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--film-size", type=int, default=1024, help="side of the uploaded PNG film")
    p.add_argument("--repeats", type=int, default=20)
    a = p.parse_args()
    import numpy as np
    import torch
    from fastapi.testclient import TestClient
    from PIL import Image

    from cxrlt.models.inference import image_input
    from cxrlt.serve.app import build_app
    from cxrlt.serve.predictor import Predictor

    exp = Path(a.experiment) if a.experiment else make_experiment(Path(tempfile.mkdtemp(prefix="cxrlt-serve-")),
                                                                   a.model, a.size, a.folds)
    pred = Predictor(exp)
    rng = np.random.default_rng(0)
    film = (rng.random((a.film_size, a.film_size)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(film).save(buf, "PNG")
    data = buf.getvalue()
    client = TestClient(build_app(pred))
    files = [("files", ("film.png", data))]
    for _ in range(3):
        assert client.post("/api/predict", files=files).status_code == 200
    t = time.perf_counter()
    for _ in range(a.repeats):
        r = client.post("/api/predict", files=files)
    api = (time.perf_counter() - t) / a.repeats
    # the floor: every fold model's forwards (the recipe's views) on the resized film, nothing else
    views = ["none", *pred.members[0][0].settings.views]
    with torch.no_grad():
        t = time.perf_counter()
        for _ in range(a.repeats):
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
        bare = (time.perf_counter() - t) / a.repeats
    t = time.perf_counter()
    for _ in range(max(1, a.repeats // 4)):
        client.post("/api/heatmap", files=files, data={"label": r.json()["findings"][0]["label"]})
    heat = (time.perf_counter() - t) / max(1, a.repeats // 4)
    print(f"device: {device_line()}")
    print(f"experiment: {exp} ({pred.n_models} fold model(s), TTA views {views}); film {a.film_size} px PNG")
    print(f"API /api/predict: {api * 1000:.0f} ms per film; bare forwards {bare * 1000:.0f} ms; "
          f"ratio {api / bare:.2f}x (decode, resize, HTTP, findings); heatmap {heat * 1000:.0f} ms")


if __name__ == "__main__":
    main()
