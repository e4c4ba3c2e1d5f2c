#!/usr/bin/env python
"""Evaluate hailong's Rasa NLU: field (land/construction/judicial/other) and category
(procedure/conduct), with a TF-IDF + logistic-regression baseline on the same folds.

Runs inside the Rasa venv, from the nlu/ directory (so `components.*` imports):

    cd nlu
    ../.rasa-venv/bin/python evaluate.py                       # 5-fold CV, config.yml
    ../.rasa-venv/bin/python evaluate.py --config fold=config.yml \
        --config nofold=configs/config_nofold.yml              # compare pipelines
    ../.rasa-venv/bin/python evaluate.py --no-cv --test tests/heldout.yml \
        --model models/hailong-nlu.tar.gz                       # held-out with a model
    ../.rasa-venv/bin/python evaluate.py --baseline-only       # seconds, no TensorFlow

Labels: complaint intents are "<field>+<category>"; a field's confidence is the sum of the
confidences of the labels carrying it (same for categories). Menu intents (greet, help,
rate, complain, ask_status, formal_complaint, affirm, deny, thanks) have no field.

Metrics reported for every system:
  field     "complaint step" view: gold complaint examples only, predicted field = argmax of
            the summed field confidences (what the bot uses once it knows it holds a
            complaint). Per-field P/R/F1, macro-F1 over the fields, confusion matrix.
  field@top "main menu" view: every example; predicted field = field of the top intent or
            "menu" when the top intent is a menu intent. Macro-F1 over the fields.
  category  gold complaint examples; argmax of summed category confidences; accuracy and
            macro-F1 over procedure/conduct.
  intent    top-intent accuracy and macro-F1 over all intents.
Each also on the subset of texts written without diacritics.

Folds: stratified by intent AND grouped by near-duplicates (texts whose folded token sets
have Jaccard >= 0.5 stay in one fold), so that an unaccented rewrite of a training
sentence cannot leak into the test fold and flatter the diacritic-folding component.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import unicodedata
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RASA_TELEMETRY_ENABLED", "false")
os.environ.setdefault("RASA_MAX_CACHE_SIZE", "0")  # no graph cache between folds
os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")
warnings.filterwarnings("ignore")

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
from components.vi_text import fold_vi, has_diacritics  # noqa: E402

# The fields are those of the training data ("<field>+<category>" intents; see
# set_fields): a field added with its data file is scored like the shipped ones.
FIELDS = ["land", "construction", "judicial_records", "other"]
CATEGORIES = ["procedure", "conduct"]
MENU = "menu"


# --------------------------------------------------------------------------- data
def load_examples(path: str) -> list[tuple[str, str]]:
    """(text, intent) pairs from Rasa YAML NLU data (file or directory)."""
    from rasa.shared.nlu.training_data.loading import load_data

    td = load_data(path)
    out = []
    for m in td.intent_examples:
        out.append((unicodedata.normalize("NFC", m.get("text")), m.get("intent")))
    return out


def set_fields(intents) -> None:
    """FIELDS := the fields of these intents, the shipped ones first, then the others."""
    global FIELDS
    found = {i.split("+")[0] for i in intents if "+" in i}
    FIELDS = [f for f in FIELDS if f in found] + sorted(found - set(FIELDS))


def field_of(intent: str) -> str:
    return intent.split("+")[0] if "+" in intent else MENU


def category_of(intent: str) -> str | None:
    return intent.split("+")[1] if "+" in intent else None


def write_nlu_yaml(examples: Sequence[tuple[str, str]], path: Path) -> None:
    from rasa.shared.nlu.training_data.message import Message
    from rasa.shared.nlu.training_data.training_data import TrainingData

    msgs = [Message(data={"text": t, "intent": i}) for t, i in examples]
    path.write_text(TrainingData(training_examples=msgs).nlu_as_yaml(), encoding="utf-8")


def near_duplicate_groups(texts: Sequence[str], threshold: float = 0.5) -> list[int]:
    sets = [set(fold_vi(t, abbreviations=True).split()) for t in texts]
    parent = list(range(len(texts)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            a, b = sets[i], sets[j]
            if not a or not b:
                continue
            if len(a & b) / len(a | b) >= threshold:
                parent[find(i)] = find(j)
    return [find(i) for i in range(len(texts))]


def make_folds(examples, n_folds: int, seed: int) -> list[np.ndarray]:
    from sklearn.model_selection import StratifiedGroupKFold

    texts = [t for t, _ in examples]
    y = [i for _, i in examples]
    groups = near_duplicate_groups(texts)
    skf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold_of = np.zeros(len(examples), dtype=int)
    for k, (_, test_idx) in enumerate(skf.split(texts, y, groups)):
        fold_of[test_idx] = k
    n_groups = len(set(groups))
    return fold_of, n_groups


# --------------------------------------------------------------------------- systems
class RasaSystem:
    def __init__(self, name: str, config: str, workdir: Path):
        self.name, self.config, self.workdir = name, config, workdir

    def train(self, train_examples, tag: str) -> tuple[str, float]:
        from rasa.model_training import train_nlu

        d = self.workdir / f"{self.name}-{tag}"
        d.mkdir(parents=True, exist_ok=True)
        data = d / "train.yml"
        write_nlu_yaml(train_examples, data)
        t0 = time.time()
        model = train_nlu(self.config, str(data), output=str(d), fixed_model_name="model")
        return model, time.time() - t0

    @staticmethod
    def predict(model_path: str, texts: Sequence[str]) -> tuple[list[dict[str, float]], float]:
        from rasa.core.agent import Agent

        agent = Agent.load(model_path)

        async def run():
            out = []
            for t in texts:
                r = await agent.parse_message(t)
                out.append(
                    {x["name"]: float(x["confidence"]) for x in r.get("intent_ranking", [])}
                    or {r["intent"]["name"]: float(r["intent"]["confidence"])}
                )
            return out

        t0 = time.time()
        preds = asyncio.run(run())
        return preds, (time.time() - t0) / max(1, len(texts))


class BaselineSystem:
    """TF-IDF char_wb 2-5 + LogisticRegression over the full intent labels."""

    def __init__(self, name: str = "baseline", fold: bool = False):
        self.name, self.fold = name, fold

    def _prep(self, texts):
        return [fold_vi(t, abbreviations=True) if self.fold else t for t in texts]

    def train(self, train_examples, tag: str):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        t0 = time.time()
        pipe = make_pipeline(
            TfidfVectorizer(
                analyzer="char_wb", ngram_range=(2, 5), lowercase=True, sublinear_tf=True, min_df=1
            ),
            LogisticRegression(C=20.0, max_iter=3000, class_weight="balanced"),
        )
        pipe.fit(self._prep([t for t, _ in train_examples]), [i for _, i in train_examples])
        return pipe, time.time() - t0

    def predict(self, model, texts):
        t0 = time.time()
        proba = model.predict_proba(self._prep(texts))
        classes = list(model.classes_)
        preds = [dict(zip(classes, map(float, row), strict=True)) for row in proba]
        return preds, (time.time() - t0) / max(1, len(texts))


# --------------------------------------------------------------------------- scoring
def derive(pred: dict[str, float]) -> dict[str, object]:
    top = max(pred.items(), key=lambda kv: kv[1])[0]
    fsum = {f: 0.0 for f in FIELDS}
    csum = {c: 0.0 for c in CATEGORIES}
    for name, conf in pred.items():
        if "+" in name:
            f, c = name.split("+", 1)
            fsum[f] = fsum.get(f, 0.0) + conf
            csum[c] = csum.get(c, 0.0) + conf
    field = max(fsum.items(), key=lambda kv: kv[1])[0]
    cat = max(csum.items(), key=lambda kv: kv[1])[0]
    return {
        "intent": top,
        "field": field,
        "field_conf": fsum[field],
        "field_top": field_of(top),
        "category": cat,
        "category_conf": csum[cat] / max(1e-9, sum(csum.values())),
    }


def prf(gold, pred, labels):
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    if not gold:
        return None
    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=labels, zero_division=0)
    per = {
        lab: {
            "precision": round(float(p[i]), 4),
            "recall": round(float(r[i]), 4),
            "f1": round(float(f[i]), 4),
            "support": int(s[i]),
        }
        for i, lab in enumerate(labels)
    }
    present = [lab for lab in labels if per[lab]["support"] > 0]
    macro = float(np.mean([per[lab]["f1"] for lab in present])) if present else 0.0
    acc = float(np.mean([g == q for g, q in zip(gold, pred, strict=True)]))
    all_labels = labels + sorted({*gold, *pred} - set(labels))
    cm = confusion_matrix(gold, pred, labels=all_labels).tolist()
    return {
        "n": len(gold),
        "accuracy": round(acc, 4),
        "macro_f1": round(macro, 4),
        "per_label": per,
        "confusion": {"labels": all_labels, "matrix": cm},
    }


def score(golds: Sequence[str], preds: Sequence[dict[str, float]], texts: Sequence[str]):
    d = [derive(p) for p in preds]
    res = {}
    for subset_name, keep in (
        ("all", lambda t: True),
        ("no_diacritics", lambda t: not has_diacritics(t)),
    ):
        idx = [i for i, t in enumerate(texts) if keep(t)]
        cidx = [i for i in idx if "+" in golds[i]]
        r = {
            "n": len(idx),
            "field": prf([field_of(golds[i]) for i in cidx], [d[i]["field"] for i in cidx], FIELDS),
            "field_top": prf(
                [field_of(golds[i]) for i in idx], [d[i]["field_top"] for i in idx], FIELDS
            ),
            "category": prf(
                [category_of(golds[i]) for i in cidx], [d[i]["category"] for i in cidx], CATEGORIES
            ),
        }
        # coverage/accuracy if the bot auto-accepts the field only above a threshold
        r["field_threshold"] = []
        for thr in (0.5, 0.6, 0.7, 0.8, 0.9):
            kept = [i for i in cidx if d[i]["field_conf"] >= thr]
            acc = (
                float(np.mean([field_of(golds[i]) == d[i]["field"] for i in kept]))
                if kept
                else None
            )
            r["field_threshold"].append(
                {
                    "threshold": thr,
                    "coverage": round(len(kept) / max(1, len(cidx)), 3),
                    "accuracy": round(acc, 4) if acc is not None else None,
                }
            )
        intents = sorted(set(golds))
        r["intent"] = prf([golds[i] for i in idx], [d[i]["intent"] for i in idx], intents)
        if r["intent"]:
            r["intent"].pop("confusion")
        res[subset_name] = r
    return res, d


# --------------------------------------------------------------------------- report
def fmt_block(name: str, res: dict) -> str:
    lines = [f"== {name}"]
    for subset in ("all", "no_diacritics"):
        r = res[subset]
        f, ft, c, it = r["field"], r["field_top"], r["category"], r["intent"]
        if not f:
            continue
        lines.append(
            f"  [{subset:13s}] n={r['n']:4d}  field macro-F1 {f['macro_f1']:.3f} (acc {f['accuracy']:.3f}, n={f['n']})"
            f" | field@top macro-F1 {ft['macro_f1']:.3f}"
            f" | category acc {c['accuracy']:.3f} macro-F1 {c['macro_f1']:.3f}"
            f" | intent acc {it['accuracy']:.3f} macro-F1 {it['macro_f1']:.3f}"
        )
    lines.append(
        "    field auto-accept (all): "
        + "  ".join(
            f"conf>={t['threshold']}: cover {t['coverage']:.2f} acc {t['accuracy'] if t['accuracy'] is not None else float('nan'):.3f}"
            for t in res["all"]["field_threshold"]
        )
    )
    f = res["all"]["field"]
    lines.append(
        "    per field (all):   "
        + "  ".join(
            f"{k}: P {v['precision']:.2f} R {v['recall']:.2f} F1 {v['f1']:.2f}"
            for k, v in f["per_label"].items()
        )
    )
    fn = res["no_diacritics"]["field"]
    if fn:
        lines.append(
            "    per field (no-dia): "
            + "  ".join(f"{k}: F1 {v['f1']:.2f}" for k, v in fn["per_label"].items())
        )
    cm = f["confusion"]
    width = max(12, *(len(x) for x in cm["labels"]))
    lines.append("    confusion (rows gold, cols predicted):")
    lines.append(f"      {'':>{width}s} " + " ".join(f"{x[:5]:>6s}" for x in cm["labels"]))
    for lab, row in zip(cm["labels"], cm["matrix"], strict=True):
        lines.append(f"      {lab:>{width}s} " + " ".join(f"{v:6d}" for v in row))
    return "\n".join(lines)


def side_by_side(results: dict[str, dict]) -> str:
    hdr = f"{'system':18s} {'field-F1':>9s} {'noDia-F1':>9s} {'f@top-F1':>9s} {'cat-acc':>8s} {'cat-F1':>7s} {'noDia-cat':>9s} {'intent-acc':>10s}"
    lines = [hdr, "-" * len(hdr)]
    for name, res in results.items():
        a, n = res["all"], res["no_diacritics"]
        lines.append(
            f"{name:18s} {a['field']['macro_f1']:9.3f} {n['field']['macro_f1'] if n['field'] else float('nan'):9.3f}"
            f" {a['field_top']['macro_f1']:9.3f} {a['category']['accuracy']:8.3f} {a['category']['macro_f1']:7.3f}"
            f" {n['category']['macro_f1'] if n['category'] else float('nan'):9.3f} {a['intent']['accuracy']:10.3f}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default=str(HERE / "data"), help="training data (file or dir)")
    ap.add_argument(
        "--config",
        action="append",
        default=[],
        help="NAME=PATH of a Rasa config (repeatable); default rasa=config.yml",
    )
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--no-cv", action="store_true", help="skip cross-validation")
    ap.add_argument("--test", help="held-out Rasa YAML file: train on all data, evaluate on it")
    ap.add_argument(
        "--model",
        action="append",
        default=[],
        help="NAME=MODEL.tar.gz to evaluate on --test instead of training",
    )
    ap.add_argument("--baseline-only", action="store_true")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--workdir", help="keep fold models here (default: temp dir, deleted)")
    ap.add_argument("--json", default=str(HERE / "reports" / "eval.json"))
    ap.add_argument("--report", default=str(HERE / "reports" / "eval.txt"))
    args = ap.parse_args(argv)

    logging.basicConfig(level=logging.WARNING)
    try:  # Rasa 3.6 logs every parse through structlog at debug level otherwise
        from rasa.utils.log_utils import configure_structlog

        configure_structlog(logging.WARNING)
    except Exception:  # pragma: no cover
        pass
    for noisy in ("rasa", "tensorflow", "absl", "matplotlib", "sanic"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="hailong-eval-"))
    work.mkdir(parents=True, exist_ok=True)
    configs = [c.split("=", 1) if "=" in c else (Path(c).stem, c) for c in args.config] or [
        ("rasa", str(HERE / "config.yml"))
    ]
    systems = []
    if not args.baseline_only:
        systems += [RasaSystem(n, p, work) for n, p in configs]
    if not args.no_baseline:
        systems += [BaselineSystem("baseline"), BaselineSystem("baseline+fold", fold=True)]

    examples = load_examples(args.data)
    set_fields(i for _, i in examples)
    out: dict[str, object] = {
        "data": args.data,
        "n_examples": len(examples),
        "label_counts": dict(sorted(Counter(i for _, i in examples).items())),
        "no_diacritics_share": round(
            float(np.mean([not has_diacritics(t) for t, _ in examples])), 3
        ),
        "configs": dict(configs),
        "cv": {},
        "heldout": {},
    }
    text_report: list[str] = [
        f"training data: {len(examples)} examples, {len(out['label_counts'])} intents, "
        f"{out['no_diacritics_share']:.0%} without diacritics"
    ]

    if not args.no_cv:
        fold_of, n_groups = make_folds(examples, args.folds, args.seed)
        out["cv_groups"] = n_groups
        text_report.append(
            f"\n##### {args.folds}-fold stratified CV (grouped: {n_groups} near-duplicate groups, seed {args.seed})"
        )
        cv_results = {}
        for sys_ in systems:
            preds: list[dict[str, float] | None] = [None] * len(examples)
            train_times, pred_times = [], []
            for k in range(args.folds):
                tr = [examples[i] for i in range(len(examples)) if fold_of[i] != k]
                te_idx = [i for i in range(len(examples)) if fold_of[i] == k]
                model, tt = sys_.train(tr, f"fold{k}")
                p, pt = sys_.predict(model, [examples[i][0] for i in te_idx])
                for i, pi in zip(te_idx, p, strict=True):
                    preds[i] = pi
                train_times.append(tt)
                pred_times.append(pt)
                print(
                    f"[{sys_.name}] fold {k + 1}/{args.folds}: train {tt:.1f}s, "
                    f"{len(te_idx)} test texts, {pt * 1000:.1f} ms/text",
                    flush=True,
                )
                if isinstance(sys_, RasaSystem) and not args.workdir:
                    shutil.rmtree(Path(model).parent, ignore_errors=True)
            res, derived = score([g for _, g in examples], preds, [t for t, _ in examples])
            res["train_seconds_per_fold"] = round(float(np.mean(train_times)), 1)
            res["predict_ms_per_text"] = round(1000 * float(np.mean(pred_times)), 2)
            res["errors"] = [
                {"text": t, "gold": g, "pred": d["intent"], "field": d["field"]}
                for (t, g), d in zip(examples, derived, strict=True)
                if d["intent"] != g
            ][:400]
            cv_results[sys_.name] = res
            text_report.append(
                fmt_block(f"{sys_.name} (train {res['train_seconds_per_fold']}s/fold)", res)
            )
        out["cv"] = cv_results
        text_report.append(
            "\nCV side by side (macro-F1 over the fields; category over procedure/conduct):"
        )
        text_report.append(side_by_side(cv_results))

    if args.test:
        test = load_examples(args.test)
        texts, golds = [t for t, _ in test], [g for _, g in test]
        text_report.append(
            f"\n##### held-out: {args.test} ({len(test)} texts, "
            f"{np.mean([not has_diacritics(t) for t in texts]):.0%} without diacritics)"
        )
        held = {}
        models = dict(m.split("=", 1) if "=" in m else (Path(m).stem, m) for m in args.model)
        todo = (
            [(n, RasaSystem(n, "", work), p) for n, p in models.items()]
            if models
            else [(s.name, s, None) for s in systems]
        )
        if models and not args.no_baseline:
            todo += [(s.name, s, None) for s in systems if isinstance(s, BaselineSystem)]
        for name, sys_, model in todo:
            tt = None
            if model is None:
                model, tt = sys_.train(examples, "full")
            p, pt = sys_.predict(model, texts)
            res, derived = score(golds, p, texts)
            res["train_seconds_full"] = round(tt, 1) if tt is not None else None
            res["predict_ms_per_text"] = round(1000 * pt, 2)
            res["errors"] = [
                {
                    "text": t,
                    "gold": g,
                    "pred": d["intent"],
                    "field": d["field"],
                    "field_conf": round(d["field_conf"], 3),
                }
                for t, g, d in zip(texts, golds, derived, strict=True)
                if d["intent"] != g
            ]
            held[name] = res
            text_report.append(
                fmt_block(f"{name}" + (f" (trained in {tt:.1f}s)" if tt else ""), res)
            )
            wrong_field = [
                e for e in res["errors"] if "+" in e["gold"] and field_of(e["gold"]) != e["field"]
            ]
            for e in wrong_field[:15]:
                text_report.append(f"      x {e['gold']:>24s} -> {e['pred']:<24s} {e['text'][:90]}")
        out["heldout"] = held
        text_report.append("\nheld-out side by side:")
        text_report.append(side_by_side(held))

    report = "\n".join(text_report)
    print("\n" + report)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, ensure_ascii=False, indent=1), encoding="utf-8")
    Path(args.report).write_text(report + "\n", encoding="utf-8")
    print(f"\nwrote {args.report} and {args.json}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
