"""A writer for the durability test, killed with SIGKILL at random moments.

Writes to a collection forever: upserts (new ids and replacements), deletes, and now and
then a snapshot. Before each operation it prints the operation ("try"); after the call
returns it prints "ack". The test replays what was acknowledged and checks the store.

    python tests/durability_writer.py DATA_DIR SEED
"""

from __future__ import annotations

import json
import random
import sys

import numpy as np

from embedsense.server.index import Catalog, CollectionNotFound, Document, Token

DIM = 16


def say(**line: object) -> None:
    print(json.dumps(line), flush=True)


def main() -> None:
    data_dir, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    catalog = Catalog(data_dir)
    try:
        collection = catalog.get("durable")
    except CollectionNotFound:
        catalog.create("durable", model="test", dim=DIM, index_spec="Flat", store_tokens=True)
        collection = catalog.get("durable")
    known = [doc_id for _, doc_id in catalog.store.live("durable")]
    say(ready=True)
    step = 0
    while True:
        step += 1
        roll = rng.random()
        if roll < 0.15 and known:
            victims = rng.sample(known, min(len(known), rng.randint(1, 3)))
            say(op="delete", ids=victims)
            collection.delete(victims)
            known = [k for k in known if k not in victims]
        elif roll < 0.17:
            say(op="snapshot")
            collection.snapshot()
        else:
            docs = []
            for _ in range(rng.randint(1, 4)):
                reuse = known and rng.random() < 0.3
                doc_id = rng.choice(known) if reuse else f"s{seed}-{step}-{len(docs)}"
                if doc_id in {d["id"] for d in docs}:
                    continue
                vector = np.random.default_rng(rng.getrandbits(32)).normal(size=DIM)
                vector = (vector / np.linalg.norm(vector)).astype(np.float32)
                n_tokens = rng.randint(1, 3)
                docs.append({
                    "id": doc_id, "text": f"text of {doc_id} at {step}",
                    "metadata": {"step": step, "seed": seed},
                    "vector": vector.tolist(),
                    "tokens": [[f"t{i}", i, i + 1] for i in range(n_tokens)],
                    "token_vectors": np.full((n_tokens, DIM), step, np.float32).tolist(),
                })  # fmt: skip
            say(op="upsert", docs=docs)
            collection.upsert([
                Document(
                    id=d["id"], text=d["text"], metadata=d["metadata"],
                    vector=np.array(d["vector"], dtype=np.float32),
                    tokens=[Token(*t) for t in d["tokens"]],
                    token_vectors=np.array(d["token_vectors"], dtype=np.float32),
                )
                for d in docs
            ])  # fmt: skip
            known += [d["id"] for d in docs if d["id"] not in known]
        say(ack=step)


if __name__ == "__main__":
    main()
