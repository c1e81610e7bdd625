"""Word-sense evaluation (`make eval`): accuracy per word and overall, for each layer choice,
with and without centring; and the purity of induced senses against the labels.

The data, tests/data/senses_eval.json, was written for embedsense: 11 words (nouns, a verb
with three senses, an adjective/adverb), 2-3 senses each, 5 support examples and 10 held-out
test sentences per sense. Support examples play the inventory; test sentences are never seen
by the method before they are scored. Last line: one JSON object.

    python tests/eval_senses.py [--words 苹果,打] [--per-sense 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import numpy as np

from embedsense.model import LoadedModel, TextRole, load_model
from embedsense.server.config import EngineConfig
from embedsense.server.engine import Engine
from embedsense.server.index import Document
from embedsense.server.senses import method
from embedsense.server.senses.words import (
    WordVectors,
    encode_to_store,
    example_occurrences,
    locate,
    own_tokens,
    stored_word_vectors,
    word_vectors,
)

DATA = Path(__file__).with_name("data") / "senses_eval.json"
LAYER_CHOICES = {"last": [-1], "second-last": [-2], "mean of last 4": [-1, -2, -3, -4],
                 "layer 6": [6]}  # fmt: skip


def load(words: list[str] | None = None, per_sense: int = 10) -> dict:
    data = json.loads(DATA.read_text(encoding="utf-8"))["words"]
    return {
        word: {label: {"support": s["support"], "test": s["test"][:per_sense]}
               for label, s in senses.items()}
        for word, senses in data.items() if not words or word in words
    }  # fmt: skip


# Sentences with no word of the evaluation: the padding that makes a document long.
NEUTRAL = ["今天天气很好。", "他每天早上跑步。", "这本书写得很好。", "我们明天去公园。",
           "会议在三点开始。", "她在学习中文。", "路上车很多。", "晚饭后我们散步。",
           "这个城市很大。", "孩子们在唱歌。"]  # fmt: skip
PADDED = ("".join(NEUTRAL + NEUTRAL[:5]), "".join(NEUTRAL[5:] + NEUTRAL))  # 15 before, 15 after


async def stored_documents(engine: Engine, texts: list[str], each_sentence: bool) -> list:
    """The documents a collection with token vectors stores for `texts`: token vectors from
    each sentence alone (as served), or from the whole text (the path before)."""
    if each_sentence:
        whole, stored = await encode_to_store(engine, texts)
    else:
        whole = await engine.embed(texts, role=TextRole.PASSAGE, windowed=True, token_vectors=True)
        stored = [own_tokens(r) for r in whole]
    return [Document(text, r.sentence, str(i), {}, tokens, vectors)
            for i, (text, r, (tokens, vectors)) in enumerate(zip(texts, whole, stored,
                                                                 strict=True))]  # fmt: skip


async def long_documents(engine: Engine, word: str, senses: dict) -> dict:
    """Each test sentence stored twice, alone and inside 30 neutral sentences; every support
    example searched (mean average precision of its sense's occurrences), and the
    occurrences clustered at the true k (purity against the senses, and against the length:
    0.5 is no trace of it), for both ways of storing token vectors."""
    sentences = [(label, t) for label, s in senses.items() for t in s["test"]]
    texts = [t for _, t in sentences] + [PADDED[0] + t + PADDED[1] for _, t in sentences]
    truth = np.array([list(senses).index(label) for label, _ in sentences] * 2)
    long = np.repeat([0, 1], len(sentences))
    queries = [(label, e) for label, s in senses.items() for e in s["support"]]
    found = await word_vectors(engine, [locate(e, word) for _, e in queries])
    results = {}
    for name, each_sentence in (("each sentence alone", True), ("whole document", False)):
        stored = [stored_word_vectors(doc, [locate(doc.text, word)])
                  for doc in await stored_documents(engine, texts, each_sentence)]  # fmt: skip
        words = np.concatenate([s.words for s in stored])
        contexts = np.concatenate([s.sentences for s in stored])
        precisions = []
        for q, (label, _) in enumerate(queries):
            scores = method.rank_occurrences(found.words[q], found.contexts[q], words, contexts,
                                             np.arange(len(words)))  # fmt: skip
            relevant = (truth == list(senses).index(label))[np.argsort(-scores, kind="stable")]
            ranks = np.arange(1, len(relevant) + 1)
            precisions.append(float((np.cumsum(relevant) / ranks)[relevant].mean()))
        clusters = method.induce(words, k=len(senses)).labels
        results[name] = {"map": round(float(np.mean(precisions)), 4),
                         "purity": round(purity(clusters, truth), 4),
                         "purity_by_length": round(purity(clusters, long), 4)}  # fmt: skip
    return results


async def vectors_for(
    engine: Engine, word: str, sentences: list[str], layers, examples: bool = False
) -> WordVectors:
    """The word's vectors: of its first occurrence in each sentence, or, for sense examples,
    of all its occurrences, as the service takes an inventory's."""
    pick = example_occurrences if examples else locate
    return await word_vectors(engine, [pick(s, word) for s in sentences], layers)


REPRESENTATIONS = {"word + sentence": method.CONTEXT_WEIGHT, "word only": 0.0}


async def evaluate(
    model: LoadedModel, data: dict, layer_choices: dict | None = None,
    config: EngineConfig | None = None,
) -> dict:  # fmt: skip
    """Accuracy for every representation x layer choice x centring; induction purity."""
    engine = Engine(config or EngineConfig(), model).start()
    try:
        results: dict = {"accuracy": {}, "induction": {}, "long documents": {}}
        for layer_name, layers in (layer_choices or LAYER_CHOICES).items():
            found = {word: {label: (await vectors_for(engine, word, s["support"], layers, True),
                                    await vectors_for(engine, word, s["test"], layers))
                            for label, s in senses.items()}
                     for word, senses in data.items()}  # fmt: skip
            for rep_name, weight in REPRESENTATIONS.items():
                for centre in (True, False):
                    key = f"{rep_name}, {layer_name}, {'centred' if centre else 'raw'}"
                    results["accuracy"][key] = score(found, weight, centre)
        for word, senses in data.items():
            sentences = [x for s in senses.values() for x in s["support"] + s["test"]]
            truth = np.array([i for i, s in enumerate(senses.values())
                              for _ in s["support"] + s["test"]])  # fmt: skip
            vectors = (await vectors_for(engine, word, sentences, None)).words
            auto = method.induce(vectors)
            fixed = method.induce(vectors, k=len(senses))
            results["induction"][word] = {
                "senses": len(senses), "k_chosen": auto.k,
                "purity_auto_k": round(purity(auto.labels, truth), 4),
                "purity_true_k": round(purity(fixed.labels, truth), 4),
            }  # fmt: skip
            results["long documents"][word] = await long_documents(engine, word, senses)
        return results
    finally:
        engine.close()


def score(found: dict, weight: float, centre: bool) -> dict:
    per_word, correct_all, total_all = {}, 0, 0
    for word, senses in found.items():
        support = {label: method.features(s.words, s.contexts, weight)
                   for label, (s, _) in senses.items()}  # fmt: skip
        correct = total = 0
        for label, (_, tests) in senses.items():
            for vector in method.features(tests.words, tests.contexts, weight):
                correct += method.disambiguate(vector, support, centre=centre).label == label
                total += 1
        per_word[word] = round(correct / total, 4)
        correct_all += correct
        total_all += total
    return {"overall": round(correct_all / total_all, 4), "words": per_word}


def purity(clusters: np.ndarray, truth: np.ndarray) -> float:
    """Share of occurrences whose cluster's majority label is their own label."""
    return sum(np.bincount(truth[clusters == c]).max() for c in np.unique(clusters)) / len(truth)


def report(results: dict) -> None:
    words = list(next(iter(results["accuracy"].values()))["words"])
    print("accuracy on held-out sentences (rows: representation, layers, centring)")
    print(f"{'':<40}{'overall':>8}" + "".join(f"{w:>{8 - len(w)}}" for w in words))
    for key, r in results["accuracy"].items():
        print(f"{key:<40}{r['overall']:>8.1%}" + "".join(f"{r['words'][w]:>8.0%}" for w in words))
    print("\nsense induction (word vectors, last layer): purity against the labels")
    for word, r in results["induction"].items():
        print(
            f"{word}\t{r['senses']} senses, k chosen {r['k_chosen']}: purity "
            f"{r['purity_auto_k']:.1%} (auto k), {r['purity_true_k']:.1%} (true k)"
        )
    print("\nstored alone and inside 30 neutral sentences: search MAP, induction purity "
          "(by sense; by length, 50 % = none)")  # fmt: skip
    for way in ("each sentence alone", "whole document"):
        rows = [r[way] for r in results["long documents"].values()]
        print(f"{way:<20} MAP {np.mean([r['map'] for r in rows]):.3f}, purity "
              f"{np.mean([r['purity'] for r in rows]):.1%}; by length "
              f"{np.mean([r['purity_by_length'] for r in rows]):.1%}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", help="comma-separated subset")
    parser.add_argument("--per-sense", type=int, default=10, help="test sentences per sense")
    args = parser.parse_args()
    data = load(args.words.split(",") if args.words else None, args.per_sense)
    results = asyncio.run(evaluate(load_model(), data))
    report(results)
    print(json.dumps(results, ensure_ascii=False))


if __name__ == "__main__":
    main()
