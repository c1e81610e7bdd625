"""The client side of `make docker-test-scale` (docker/test-scale.sh), run in a container of
the embedsense image on the compose network, through the SDK.

    python scale_check.py write --target dns:///encoder:50051 --collection C --seconds S
        Upserts small batches of new documents for S seconds (balanced round-robin over every
        replica) while the host SIGKILLs one replica. Prints "acked N" after each
        acknowledged batch, then one line "result {json}": the acknowledged ids, every id
        sent, the failed calls.
    python scale_check.py verify --target HOST:50051 --collection C --result FILE
        Through one surviving replica: every acknowledged document is stored with its text,
        and the count lies between the acknowledged and the sent ones (a batch whose call
        failed may still have been stored). Exit status 1 and what is missing otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from embedsense.client import Client, EmbedSenseError, Retry

BATCH = 4  # documents per upsert: many small acknowledgements, so the kill lands between some
GET_CHUNK = 100  # ids per Get


def text_of(doc_id: str) -> str:
    """The text stored under an id, so that verify can check it without the writer's state."""
    number = int(doc_id.rsplit("-", 1)[1])
    return f"第{number}号文档：苹果和小米都是公司，也是吃的东西。 doc {number}"


def write(client: Client, collection: str, seconds: float) -> dict:
    client.create_collection(collection)
    acked: list[str] = []
    sent: list[str] = []
    failures: list[str] = []
    slowest = 0.0  # the longest upsert, retries included: what the kill cost a caller
    deadline = time.monotonic() + seconds
    number = 0
    while time.monotonic() < deadline:
        ids = [f"doc-{number + i}" for i in range(BATCH)]
        number += BATCH
        sent += ids
        started = time.monotonic()
        try:
            # A call cut by the kill is UNAVAILABLE: the SDK sends it again to another
            # replica (Retry); the ids are fixed, so a retry replaces what a cut try stored.
            client.upsert(collection, [{"id": i, "text": text_of(i)} for i in ids])
        except EmbedSenseError as err:
            failures.append(f"{ids[0]}..: {type(err).__name__}: {err}")
            continue
        finally:
            slowest = max(slowest, time.monotonic() - started)
        acked += ids
        print(f"acked {len(acked)}", flush=True)
    return {"acked": acked, "sent": sent, "failures": failures, "slowest_s": round(slowest, 2)}


def verify(client: Client, collection: str, result: dict) -> list[str]:
    """What is wrong (empty: nothing)."""
    acked, sent = result["acked"], result["sent"]
    problems = []
    missing, wrong = [], []
    for start in range(0, len(acked), GET_CHUNK):
        chunk = acked[start : start + GET_CHUNK]
        for doc_id, doc in zip(chunk, client.get(collection, chunk), strict=True):
            if doc is None:
                missing.append(doc_id)
            elif doc.text != text_of(doc_id):
                wrong.append(doc_id)
    if missing:
        problems.append(f"{len(missing)} acknowledged documents missing: {missing[:10]}")
    if wrong:
        problems.append(f"{len(wrong)} acknowledged documents with another text: {wrong[:10]}")
    count = client.count(collection)
    print(f"count {count}, acknowledged {len(acked)}, sent {len(sent)}")
    if not len(acked) <= count <= len(sent):
        problems.append(f"count {count} is outside [{len(acked)}, {len(sent)}]")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("step", choices=["write", "verify"])
    parser.add_argument("--target", required=True)
    parser.add_argument("--collection", required=True)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--result", help="verify: the writer's result line, as a JSON file")
    args = parser.parse_args()
    # Generous retries: a replica's connections break at once on SIGKILL, but gRPC needs a
    # moment to take its address out of the round-robin (DNS re-resolution).
    with Client(args.target, timeout=30, retry=Retry(attempts=8, max_backoff=4.0)) as client:
        if args.step == "write":
            print("result " + json.dumps(write(client, args.collection, args.seconds)))
            return 0
        with open(args.result, encoding="utf-8") as file:
            problems = verify(client, args.collection, json.load(file))
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
