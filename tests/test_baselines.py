"""GLUE baselines (ultracram.train.baselines): a direct scikit-learn run, the majority share, the
cache, the statistics run_glue adds, and the sentences below the table."""

import json
import tarfile

import numpy as np
import pytest
from scipy.sparse import csr_matrix, hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics.pairwise import paired_cosine_distances
from threadpoolctl import threadpool_limits

from ultracram.data.glue import GlueSplit, compute_metrics, load_glue_tsv
from ultracram.data.sample import sample_glue_dir
from ultracram.train.baselines import (
    BASELINES,
    BOW,
    MAJORITY,
    Resamples,
    add_statistics,
    baseline_entries,
    bow_predictions,
    cached_task_baselines,
    compute_task_baselines,
    features,
    fit_vectorizer,
    median_run,
)
from ultracram.train.glue_table import glue_markdown


def _sample(display: str, task: str) -> tuple[GlueSplit, GlueSplit]:
    d = sample_glue_dir() / display
    return load_glue_tsv(task, d / "train.tsv"), load_glue_tsv(task, d / "dev.tsv")


def _by_hand(train: GlueSplit, dev: GlueSplit, model):
    """The documented recipe written out with scikit-learn directly."""
    vec = TfidfVectorizer(ngram_range=(1, 2), lowercase=True, token_pattern=r"(?u)\b\w+\b", sublinear_tf=True,
                          max_features=100_000)  # fmt: skip
    vec.fit(train.text_a + (train.text_b or []))

    def x(s: GlueSplit):
        a = vec.transform(s.text_a)
        if s.text_b is None:
            return a
        b = vec.transform(s.text_b)
        cosine = csr_matrix(np.asarray(a.multiply(b).sum(axis=1)))
        return hstack([a, b, a.multiply(b), cosine]).tocsr()

    with threadpool_limits(limits=1):  # as the baseline runs (its sums do not depend on the core count)
        return model.fit(x(train), np.asarray(train.labels)).predict(x(dev)).tolist()


@pytest.mark.parametrize("display,task", [("SST-2", "sst2"), ("RTE", "rte"), ("STS-B", "stsb")])
def test_bag_of_words_equals_a_direct_scikit_learn_run(display, task):
    train, dev = _sample(display, task)
    model = Ridge(alpha=1.0) if task == "stsb" else LogisticRegression(C=1.0, max_iter=1000)
    assert bow_predictions(train, [dev])["dev"] == _by_hand(train, dev, model)
    if train.text_b is not None:  # the last pair column is the cosine of the two tf-idf vectors
        vec = fit_vectorizer(train)
        cosine = 1 - paired_cosine_distances(vec.transform(dev.text_a), vec.transform(dev.text_b))
        assert np.allclose(features(vec, dev)[:, -1].toarray().ravel(), cosine, rtol=0, atol=1e-12)


def test_majority_is_the_majority_share_and_constant_scores_are_zero():
    train, dev = _sample("SST-2", "sst2")
    got = compute_task_baselines(train, [dev])
    majority = int(np.bincount(train.labels).argmax())
    assert set(got[MAJORITY]["dev"]["predictions"]) == {majority}
    assert got[MAJORITY]["dev"]["metrics"]["accuracy"] == dev.labels.count(majority) / len(dev)
    # Scores come from the project's metric code, so they compare with the encoders' numbers.
    assert got[BOW]["dev"]["metrics"] == compute_metrics("sst2", got[BOW]["dev"]["predictions"], dev.labels)
    train, dev = _sample("STS-B", "stsb")
    got = compute_task_baselines(train, [dev])
    assert got[MAJORITY]["dev"]["predictions"][0] == pytest.approx(np.mean(train.labels))
    assert got[MAJORITY]["dev"]["metrics"] == {"pearson": 0.0, "spearman": 0.0}
    assert got[BOW]["dev"]["metrics"]["spearman"] > 0.5  # shared words say much about similarity (0.665)
    # A training set of one class: both baselines predict it (logistic regression needs two).
    sst_train, sst_dev = _sample("SST-2", "sst2")
    one = sst_train.subset([i for i, y in enumerate(sst_train.labels) if y == 1][:20])
    assert set(compute_task_baselines(one, [sst_dev])[BOW]["dev"]["predictions"]) == {1}


def test_on_the_shared_sst2_data(shared_data, tmp_path):
    """Full SST-2 dev, 10,000 training sentences (the subsample run_glue would take with
    --finetune.max_train_examples 10000): the majority class is at 50.9% and the bag of words far
    above it, as published bag-of-words baselines are (about 80%)."""
    from ultracram.train.finetune import subsample

    with tarfile.open(shared_data / "glue" / "glue_data.tar.xz") as tar:
        members = [
            m for m in tar.getmembers() if m.name.startswith("glue_data/SST-2/") and "test" not in m.name
        ]
        tar.extractall(tmp_path, members=members, filter="data")
    d = tmp_path / "glue_data" / "SST-2"
    train, dev = (
        subsample(load_glue_tsv("sst2", d / "train.tsv"), 10_000),
        load_glue_tsv("sst2", d / "dev.tsv"),
    )
    got = compute_task_baselines(train, [dev])
    assert got[MAJORITY]["dev"]["metrics"]["accuracy"] == pytest.approx(444 / 872)
    assert 0.75 < got[BOW]["dev"]["metrics"]["accuracy"] < 0.85


def test_cache_is_reused_for_the_same_examples_and_replaced_for_others(tmp_path):
    train, dev = _sample("RTE", "rte")
    first, reused = cached_task_baselines(tmp_path, train, [dev])
    assert not reused and (tmp_path / "baselines" / "rte.json").is_file()
    again, reused = cached_task_baselines(tmp_path, train, [dev])
    assert reused and again == first
    fewer = train.subset(range(500))
    other, reused = cached_task_baselines(tmp_path, fewer, [dev])
    assert not reused and other != first
    stored = json.loads((tmp_path / "baselines" / "rte.json").read_text())
    assert stored["identity"]["train_examples"] == 500
    (tmp_path / "baselines" / "rte.json").write_text("{not json")
    assert cached_task_baselines(tmp_path, fewer, [dev]) == (other, False)


def _run(preds: list | None, split: str, metric: str, value: float, seed: int) -> dict:
    r = {"seed": seed, "metrics": {split: {metric: value}}}
    if preds is not None:
        r["predictions"] = {split: preds}
    return r


def test_median_run():
    runs = [_run(None, "dev", "accuracy", v, s) for s, v in enumerate([0.75, 0.5, 0.25, 1.0])]
    assert median_run(runs, "dev", "accuracy") == 0  # median 0.625: 0.75 and 0.5 tie, the lower seed
    assert median_run(runs[:3], "dev", "accuracy") == 1


def _results(train: GlueSplit, dev: GlueSplit, checkpoints: dict[str, list | None]) -> dict:
    """results.json as run_glue builds it, for checkpoints given by their dev predictions."""
    from ultracram.train.finetune import glue_average, summarize

    computed = {"sst2": compute_task_baselines(train, [dev])}
    resamples = Resamples(n_boot=300)
    rows = baseline_entries(computed, {"sst2": (train, [dev])}, resamples)
    entries = []
    for label, preds in checkpoints.items():
        value = compute_metrics("sst2", preds or [0] * len(dev), dev.labels)["accuracy"]
        runs = [_run(preds, "dev", "accuracy", value, 0)]
        task = {"train_examples": len(train), "dev_examples": {"dev": len(dev)}, "summary": summarize(runs)}
        add_statistics(task, runs, [dev], computed["sst2"], resamples)
        entries.append({"label": label, "tasks": {"sst2": task}})
    for e in [*entries, *rows]:
        e["average"] = glue_average(e["tasks"])
    return {"protocol": "sane", "seeds": [0], "notes": [], "bootstrap": {"level": 0.95, "resamples": 300},
            "baselines": rows, "checkpoints": entries}  # fmt: skip


def test_statistics_rows_and_sentences():
    train, dev = _sample("SST-2", "sst2")
    bow = compute_task_baselines(train, [dev])[BOW]["dev"]["predictions"]
    rng = np.random.default_rng(0)
    # "good": the bag of words with 60% of its errors fixed; "same": the bag of words itself;
    # "coin": random guesses; "old": a run from before predictions were kept.
    good = [y if (p != y and rng.random() < 0.6) else p for p, y in zip(bow, dev.labels)]
    coin = rng.integers(0, 2, len(dev)).tolist()
    res = _results(train, dev, {"good": good, "same": bow, "coin": coin, "old": None})
    assert [r["label"] for r in res["baselines"]] == list(BASELINES)
    cell = res["checkpoints"][0]["tasks"]["sst2"]["summary"]["dev"]["accuracy"]
    assert cell["ci"][0] < cell["median"] < cell["ci"][1] and cell["ci_seed"] == 0
    vs = res["checkpoints"][0]["tasks"]["sst2"]["vs_baselines"]["dev"]
    assert vs["metric"] == "accuracy" and vs["vs"][BOW]["p_value"] < 0.01 and vs["vs"][BOW]["diff"] > 0
    same = res["checkpoints"][1]["tasks"]["sst2"]["vs_baselines"]["dev"]["vs"][BOW]
    assert (same["diff"], same["p_value"]) == (0.0, 1.0)
    old = res["checkpoints"][3]["tasks"]["sst2"]
    assert old["vs_baselines"] == {"dev": None} and old["summary"]["dev"]["accuracy"]["ci"] is None
    md = glue_markdown(res)
    rows = md.splitlines()
    assert [r.split(" | ")[0] for r in rows[2:8]] == ["| good", "| same", "| coin", "| old", "| majority",
                                                       f"| {BOW}"]  # fmt: skip
    assert rows[4].split(" | ")[1].count("[") == 1 and "[" not in rows[5].split(" | ")[1]  # old: no interval
    sentence = next(line for line in rows if line.startswith("- SST-2: "))
    assert "good beats bag-of-words by +" in sentence and "(95% CI " in sentence
    assert (
        "same is not distinguishable from bag-of-words (+0.0 points" in sentence and "p = 1.000" in sentence
    )
    assert "coin is worse than bag-of-words: -" in sentence
    assert "old not tested (no per-example predictions" in sentence
    assert "**At chance: coin (" in sentence and "good" not in sentence.split("At chance")[1]
    assert "percentile bootstrap interval over the dev examples (300 resamples)" in md
    # One checkpoint that is no better than the bag of words: said in so many words.
    alone = glue_markdown(_results(train, dev, {"same": bow}))
    assert "- SST-2: same is not distinguishable from the bag-of-words baseline (+0.0 points" in alone
    both = glue_markdown(_results(train, dev, {"a": bow, "b": list(bow)}))
    assert (
        "- SST-2: no checkpoint is distinguishable from the bag-of-words baseline (p >= 0.05): a +0.0" in both
    )
