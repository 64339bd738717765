"""Text class queries (model.class_queries: text) and zero-shot labels: a tiny random BERT built
from a config (no download) exercises the real encoder path."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, cfg_at

from cxrlt.config import Config
from cxrlt.data.labels import LABELS_2023, LABELS_2024, ZERO_SHOT_2024_TASK3, ZERO_SHOT_2026_TASK2
from cxrlt.errors import CxrltError
from cxrlt.models import text as text_mod
from cxrlt.models.heads import MLDecoder
from cxrlt.models.text import add_labels, class_prompts, encode_labels, label_embeddings, write_random_bert

WORDS = ["chest x-ray showing {label}", *LABELS_2023, *ZERO_SHOT_2024_TASK3, *ZERO_SHOT_2026_TASK2]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return write_random_bert(tmp_path_factory.mktemp("enc") / "tiny_bert", WORDS, hidden=16, layers=1, heads=2)


def mcfg(encoder, **kw):
    return Config(dict(name="test_resnet", in_chans=1, drop_rate=0.0, drop_path_rate=0.0, pretrained=False,
                       pretrained_path=None, head="ml_decoder", decoder_dim=16, decoder_heads=2, decoder_layers=1,
                       class_queries="text", text_encoder=str(encoder), prompt="chest x-ray showing {label}", **kw))


def test_embeddings_are_mean_pooled_and_text_queries_have_the_documented_shapes_and_grads(bert, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    labels = LABELS_2023[:5]
    emb = label_embeddings(mcfg(bert), labels, tmp_path / "cache.json")
    assert emb.shape == (5, 16) and emb.dtype == np.float32
    assert class_prompts(["Round(ed) Atelectasis"], "a {label}.") == ["a round atelectasis."]
    tok, net = AutoTokenizer.from_pretrained(bert), AutoModel.from_pretrained(bert)
    with torch.no_grad():   # mean of the token states (CLS and SEP included, no padding) of one prompt
        h = net(**tok(["chest x-ray showing edema"], return_tensors="pt")).last_hidden_state[0]
    assert np.allclose(emb[labels.index("Edema")], h.mean(0).numpy(), atol=1e-5)
    assert not np.allclose(emb[0], emb[1])                       # different labels, different vectors

    head = MLDecoder(in_dim=8, num_classes=5, dim=16, heads=2, text_emb=torch.from_numpy(emb))
    assert head.class_queries().shape == (5, 16)
    assert "text_emb" in dict(head.named_buffers()) and "text_emb" in head.state_dict()
    assert "text_emb" not in dict(head.named_parameters()) and not head.text_emb.requires_grad   # frozen
    assert head.weight.shape == (16,) and head.bias.shape == (1,)                                # shared read-out
    assert not hasattr(head, "queries")
    out = head(torch.randn(3, 7, 8))
    assert out.shape == (3, 5)
    out.sum().backward()
    assert head.query_proj.weight.requires_grad and head.query_proj.weight.grad.abs().sum() > 0  # trained
    assert head.text_emb.grad is None


def test_the_cache_is_reused_and_only_new_labels_are_encoded(bert, tmp_path, monkeypatch):
    enc = shutil.copytree(bert, tmp_path / "enc")
    cache = tmp_path / "exp" / "text_embeddings.json"
    calls = []
    real = text_mod.encode_labels
    monkeypatch.setattr(text_mod, "encode_labels", lambda e, prompts: calls.append(list(prompts)) or real(e, prompts))
    first = label_embeddings(mcfg(enc), LABELS_2023[:3], cache)
    assert calls == [class_prompts(LABELS_2023[:3], "chest x-ray showing {label}")]
    both = label_embeddings(mcfg(enc), LABELS_2023[:4], cache)
    assert calls[1] == ["chest x-ray showing consolidation"]        # only the new label was encoded
    assert np.array_equal(both[:3], first)
    shutil.rmtree(enc)                                              # the encoder is gone: the cache alone serves
    again = label_embeddings(mcfg(enc), LABELS_2023[:4], cache)
    assert len(calls) == 2 and np.array_equal(again, both)
    with pytest.raises(CxrltError, match="model.text_encoder") as e:    # a label it does not have needs the encoder
        label_embeddings(mcfg(enc), ["Goiter"], cache)
    assert "\n" not in str(e.value)
    with pytest.raises(CxrltError, match="model.prompt"):
        label_embeddings(Config(dict(mcfg(enc), prompt="no placeholder")), ["Edema"], cache)


def test_offline_hub_name_is_a_one_line_error_naming_the_key(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))            # an empty cache
    name = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract-fulltext"
    with pytest.raises(CxrltError) as e:
        encode_labels(name, ["chest x-ray showing edema"])
    msg = str(e.value)
    assert "\n" not in msg and f"model.text_encoder '{name}'" in msg
    assert "not a local folder" in msg and "huggingface-cli download" in msg


def test_config_refuses_text_queries_without_ml_decoder_and_unknown_holdout_labels():
    from cxrlt.config import load_config
    from cxrlt.data.datasets import resolve_dataset
    from cxrlt.models.heads import check_head

    with pytest.raises(CxrltError, match=r"model.class_queries='text' is read by model.head=ml_decoder only"):
        check_head(Config(dict(head="linear", class_queries="text")))
    with pytest.raises(CxrltError, match="needs model.text_encoder"):
        check_head(Config(dict(head="ml_decoder", class_queries="text", text_encoder=None)))
    with pytest.raises(CxrltError, match="data.holdout_labels: 'Goiter' is not one of"):
        resolve_dataset(load_config(ROOT / "experiments" / "demo.yaml", ["data.holdout_labels=[Goiter]"]).data)
    spec = resolve_dataset(load_config(ROOT / "experiments" / "demo.yaml", ["data.holdout_labels=[Edema]"]).data)
    assert "Edema" not in spec.labels and len(spec.labels) == 25 and spec.submission_labels == tuple(LABELS_2023)


def test_set_text_scores_an_unseen_label_and_a_checkpoint_predicts_without_the_encoder(bert, tmp_path):
    from cxrlt.models.checkpoint import load_model, save
    from cxrlt.models.factory import arch_record, create_model

    enc = shutil.copytree(bert, tmp_path / "enc")
    cache = tmp_path / "text_embeddings.json"
    labels = LABELS_2023[:4]
    m = mcfg(enc)
    torch.manual_seed(0)
    net = create_model(m, 4, text_emb=label_embeddings(m, labels, cache)).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        before = net(x)
    path = save(dict(model=net.state_dict(), arch=arch_record(m, labels, 32, "stretch", 0.5, 0.25, net)),
                tmp_path / "best.pt")
    label_embeddings(m, ["Goiter"], cache)          # the zero-shot label's embedding, cached while the encoder exists
    shutil.rmtree(enc)
    again, arch = load_model(path)                  # rebuilt from the file: text_dim recorded, buffer from the weights
    assert arch["model"]["text_dim"] == 16 and arch["model"]["class_queries"] == "text"
    with torch.no_grad():
        assert torch.allclose(again(x), before, atol=1e-6)
    add_labels(again, arch, ["Goiter"], cache)
    with torch.no_grad():
        after = again(x)
    assert after.shape == (2, 5)                                    # C + 1 logits
    assert torch.allclose(after[:, :4], before, atol=1e-6)          # trained classes unchanged (no self-attention)
    assert torch.isfinite(after[:, 4]).all() and not torch.allclose(after[:, 4:], before[:, :1])
    learned, arch_l = load_model(save(dict(model=create_model(Config(dict(m, class_queries="learned")), 4).state_dict(),
                                           arch=arch_record(Config(dict(m, class_queries="learned")), labels, 32,
                                                            "stretch", 0.5, 0.25)), tmp_path / "l.pt"))
    with pytest.raises(CxrltError, match="model.class_queries=text"):
        add_labels(learned, arch_l, ["Goiter"], cache)


def test_learned_queries_keep_the_old_weights_and_old_checkpoints_load():
    from cxrlt.experiment import head_spec
    from cxrlt.models.checkpoint import load_model

    old_model = dict(name="test_resnet", in_chans=1, drop_rate=0.0, drop_path_rate=0.0, head="ml_decoder",
                     decoder_dim=16, decoder_heads=2, decoder_layers=1)      # an arch record from before text queries
    torch.manual_seed(0)
    head = MLDecoder(in_dim=8, num_classes=3, dim=16, heads=2)
    torch.manual_seed(0)      # the old creation order: embed, queries, layers, weight: same initial weights per seed
    torch.nn.Linear(8, 16)
    assert torch.equal(head.queries, torch.randn(3, 16) * 0.02)
    keys = set(head.state_dict())
    assert {"queries", "weight", "bias", "embed.weight", "embed.bias"} <= keys
    assert not any(k.startswith(("query_proj", "text_emb")) for k in keys)
    assert head.weight.shape == (3, 16) and head.bias.shape == (3,) and head.queries.requires_grad
    from cxrlt.models.factory import model_from_arch

    state = model_from_arch(dict(kind="image", model=old_model, num_classes=3)).state_dict()
    net, _ = load_model(dict(model=state, arch=dict(kind="image", model=old_model, labels=["a", "b", "c"], num_classes=3,
                                                     image_size=32, resize="stretch", mean=0.5, std=0.25)))
    assert net.head.queries.shape == (3, 16)
    assert head_spec(Config(old_model)) == "ml_decoder(decoder_dim=16,decoder_heads=2,decoder_layers=1)"
    assert head_spec(Config(dict(old_model, class_queries="learned", text_encoder=None))) == head_spec(Config(old_model))


def test_zero_shot_presets_submit_their_findings_in_order_and_check_validates(tmp_path, stage):
    from cxrlt.config import load_config
    from cxrlt.data.datasets import resolve_dataset
    from cxrlt.ensemble.submission import make_submission

    d = tmp_path / "input" / "cxr-lt-2024"
    d.mkdir(parents=True)
    ids = [f"d{i}" for i in range(6)]
    pd.DataFrame({"dicom_id": ids, "fpath": [f"files/{i}.jpg" for i in ids]}).to_csv(d / "test_task3.csv", index=False)
    ov = ["data.preset=cxr-lt-2024-task3", f"data.input_dir={tmp_path / 'input'}", f"output_dir={tmp_path / 'exp'}",
          f"submission.dir={tmp_path / 'subs'}", "submission.name=task3"]
    cfg = load_config(ROOT / "experiments" / "demo.yaml", ov)
    spec = resolve_dataset(cfg.data)
    assert spec.labels == tuple(LABELS_2024) and spec.zero_shot_labels == tuple(ZERO_SHOT_2024_TASK3)
    assert spec.submission_labels == ("Bulla", "Cardiomyopathy", "Hilum", "Osteopenia", "Scoliosis")
    assert resolve_dataset(Config(dict(preset="cxr-lt-2026-task2"))).submission_labels == (
        "Scoliosis", "Osteopenia", "Bulla", "Infarction", "Adenopathy", "Goiter")
    # stage 04's test.csv of a task-3 recipe: the 40 trained columns, then the 5 zero-shot ones
    rng = np.random.default_rng(0)
    cols = [*LABELS_2024, *ZERO_SHOT_2024_TASK3]
    (tmp_path / "exp").mkdir()
    pd.DataFrame(rng.random((6, len(cols))), columns=cols).assign(dicom_id=ids)[["dicom_id", *cols]].to_csv(
        tmp_path / "exp" / "test.csv", index=False)
    from cxrlt.stage import seal

    seal(tmp_path / "exp" / "metrics.json", {}, [tmp_path / "exp" / "test.csv"])     # as stage 04 vouches for it
    r = make_submission(cfg)
    sub = pd.read_csv(r["csv"])
    assert list(sub.columns) == ["dicom_id", *ZERO_SHOT_2024_TASK3] and sub.dicom_id.tolist() == ids
    ok = stage(ROOT / "src" / "07_make_submission.py", "--config", ROOT / "experiments" / "demo.yaml", *ov,
                    "--check", r["zip"])
    assert ok.returncode == 0 and "OK (6 rows" in ok.stdout, ok.stderr
    bad = tmp_path / "forty.csv"
    pd.read_csv(tmp_path / "exp" / "test.csv")[["dicom_id", *LABELS_2024]].to_csv(bad, index=False)
    no = stage(ROOT / "src" / "07_make_submission.py", "--config", ROOT / "experiments" / "demo.yaml", *ov,
                    "--check", bad)
    assert no.returncode == 2 and "wrong columns" in no.stderr and "Bulla" in no.stderr


def test_predict_scores_held_out_and_unseen_labels_zero_shot(base, bert, tmp_path):
    from cxrlt.data.datasets import read_split, resolve_dataset
    from cxrlt.ensemble.thresholds import tune_thresholds
    from cxrlt.evaluate.predict import predict_experiment
    from cxrlt.train.fold import train_fold

    out = tmp_path / "exp"
    cfg = cfg_at(base, out, "model.head=ml_decoder", "model.class_queries=text", f"model.text_encoder={bert}",
                 "model.decoder_dim=16", "model.decoder_heads=2", "data.holdout_labels=[Cardiomegaly,Edema]",
                 "predict.zero_shot_labels=[Goiter]", "train.epochs=1", "train.max_steps_per_epoch=2",
                 "predict.bootstrap=0", "predict.tta=none")
    for k in range(int(cfg.folds.k)):
        train_fold(cfg, k, progress=False)
    emb_file = out / "text_embeddings.json"
    assert len(json.loads(emb_file.read_text())["encoders"][str(bert)]) == 24      # the trained labels' prompts
    r = predict_experiment(cfg, progress=False)
    spec = resolve_dataset(cfg.data)
    trained = list(spec.labels)
    assert len(trained) == 24 and "Edema" not in trained
    for name in ("oof.csv", "test.csv", "development.csv"):
        cols = pd.read_csv(out / name, nrows=1).columns.tolist()
        assert cols[1:25] == trained and cols[25:28] == ["Cardiomegaly", "Edema", "Goiter"], name
    oof = pd.read_csv(out / "oof.csv")
    assert oof[["Cardiomegaly", "Edema", "Goiter"]].std().min() > 0                 # real scores, not a constant
    z = json.loads((out / "metrics.json").read_text())["zero_shot"]
    train = read_split(spec, "train", labels="required")
    assert set(z["labels"]) == {"Cardiomegaly", "Edema"} and z["columns"] == ["Cardiomegaly", "Edema", "Goiter"]
    assert z["labels"]["Edema"]["prevalence"] == pytest.approx(train["Edema"].mean())
    assert z["trained_mAP"] == pytest.approx(r["mAP"]) and 0 < z["mAP"] <= 1 and 0 < z["chance"] < 1
    agn = oof[trained].mean(1)       # the label-agnostic bar: the mean of the trained classes' OOF probabilities
    from sklearn.metrics import average_precision_score
    assert z["labels"]["Edema"]["AP_agnostic"] == pytest.approx(average_precision_score(train["Edema"], agn), abs=1e-6)
    assert "zero_shot" in r["development"]
    assert len(json.loads(emb_file.read_text())["encoders"][str(bert)]) == 27       # + the zero-shot prompts
    t = tune_thresholds(cfg)          # stage 06 reads the trained columns and ignores the zero-shot ones
    assert set(t["thresholds"]) == set(trained)


def test_blend_carries_zero_shot_columns_every_member_has(base, tmp_path):
    from test_blend_submit import fake_member

    from cxrlt.ensemble.blend import blend_experiment
    from cxrlt.stage import seal

    cfg = cfg_at(base, tmp_path / "x")
    members = [fake_member(cfg, tmp_path / m, 0.3, s) for m, s in (("a", 1), ("b", 2))]
    for i, m in enumerate(members):    # stage 04 of a text-query model: zero-shot columns after the trained ones
        t = pd.read_csv(m / "test.csv", dtype={"dicom_id": str})
        t["Goiter"], t["Bulla"] = 0.2 * (i + 1), 0.5
        if i == 1:
            t = t.drop(columns="Bulla")      # only in one member: not carried
        t.to_csv(m / "test.csv", index=False)
        seal(m / "metrics.json", {"mAP": 0.5}, [m / "oof.csv", m / "test.csv", m / "development.csv"])  # as stage 04
    r = blend_experiment(cfg_at(base, tmp_path / "blend", "blend.mode=mean", f"blend.members=[{members[0]}, {members[1]}]"))
    test = pd.read_csv(r["dir"] / "test.csv")
    assert list(test.columns) == ["dicom_id", *LABELS_2023, "Goiter"]
    assert np.allclose(test["Goiter"], 0.3)                         # the members' mean, as the trained columns


def test_zero_shot_figures_put_ap_beside_prevalence_random_and_label_agnostic_scores():
    from cxrlt.metrics import zero_shot_figures

    rng = np.random.default_rng(0)
    y = (rng.random((2000, 3)) < [0.3, 0.05, 0.0]).astype(float)
    z = zero_shot_figures(y, y + 0.01 * rng.random(y.shape), ["a", "b", "none"], trained_map=0.4,
                          agnostic=y[:, 0])
    assert z["labels"]["a"]["AP"] == pytest.approx(1) and z["mAP"] == pytest.approx(1)       # perfect scores
    assert z["labels"]["a"]["prevalence"] == pytest.approx(y[:, 0].mean())
    assert z["chance"] == pytest.approx(y[:, :2].mean(0).mean())                             # no-positive label left out
    assert z["left_out"] == ["none"] and z["trained_mAP"] == 0.4
    assert abs(z["labels"]["a"]["AP_random"] - y[:, 0].mean()) < 0.03                       # random scores ~ prevalence
    assert z["labels"]["a"]["AP_agnostic"] == pytest.approx(1)                               # this score *is* label a
    assert z["labels"]["b"]["AP_agnostic"] < 0.2
