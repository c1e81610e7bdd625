"""`make faults`: the server killed with SIGKILL in the middle of streaming bulk upserts, 20
rounds: after each restart every acknowledged document must be there (with --frontends N,
the engine process is the one killed; its front ends follow it). Then a client with
retries keeps calling across a kill and restart and must finish its work.
Last line: one JSON object.

    python tests/ops/faults.py [--rounds 20] [--frontends N]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workload import chinese_texts  # noqa: E402

from embedsense.client import Client, EmbedSenseError, Retry  # noqa: E402
from ops.serverproc import ServerProcess  # noqa: E402

TEXTS = chinese_texts(500)


def stream_until_killed(target: str, round_: int, acked: list[str], stop: threading.Event):
    """Upsert calls of 30 documents in 3 streamed batches, back to back; a call's ids count
    as acknowledged once it returns."""
    call = 0
    with Client(target, retry=Retry(attempts=1), timeout=60) as c:
        while not stop.is_set():
            docs = [{"id": f"r{round_}-c{call}-{i}", "text": TEXTS[(call * 30 + i) % len(TEXTS)],
                     "metadata": {"round": round_}} for i in range(30)]  # fmt: skip
            try:
                acked += c.upsert("bulk", docs, batch_size=10, show_progress_bar=False)
            except EmbedSenseError:
                return  # the server is gone
            call += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--frontends", default="1", help="the server's --frontends")
    args = parser.parse_args()
    rng = random.Random(7)
    rounds = []
    with tempfile.TemporaryDirectory() as data_dir:
        server = ServerProcess(Path(data_dir), None, "--frontends", args.frontends)
        server.start()
        with Client(server.target) as c:
            c.create_collection("bulk")
        all_acked: list[str] = []
        for round_ in range(args.rounds):
            acked: list[str] = []
            stop = threading.Event()
            writer = threading.Thread(target=stream_until_killed,
                                      args=(server.target, round_, acked, stop))  # fmt: skip
            writer.start()
            time.sleep(rng.uniform(1.0, 4.0))  # mid-stream: calls are always in flight
            server.kill()
            stop.set()
            writer.join(60)
            all_acked += acked
            restart = server.start()
            with Client(server.target, timeout=120) as c:
                found = [d for i in range(0, len(all_acked), 500)
                         for d in c.get("bulk", all_acked[i : i + 500])]  # fmt: skip
                missing = sum(d is None for d in found)
                count = c.count("bulk")
            rounds.append({
                "acked_this_round": len(acked), "acked_total": len(all_acked),
                "missing": missing, "stored": count, "restart_s": round(restart, 1),
            })  # fmt: skip
            print(f"round {round_ + 1:>2}: {len(acked):>4} acknowledged this round, "
                  f"{len(all_acked):>5} in all, {missing} missing; {count} stored (in-flight, "
                  f"unacknowledged ones may be too); restart {restart:.1f} s")  # fmt: skip

        # A client with retries, working across a kill and a restart.
        done: list = []
        retrying = Retry(attempts=12, initial_backoff=0.25, max_backoff=2.0)

        def patient_client() -> None:
            with Client(server.target, retry=retrying, timeout=30) as c:
                for i in range(60):
                    done.append(c.encode([TEXTS[i]]).shape)

        worker = threading.Thread(target=patient_client)
        worker.start()
        time.sleep(1.0)
        server.kill()
        outage_started = time.monotonic()
        server.start()
        outage = time.monotonic() - outage_started
        worker.join(180)
        server.stop()
    lost = sum(r["missing"] for r in rounds)
    print(f"\n{args.rounds} kills mid-stream: {len(all_acked)} documents acknowledged, {lost} lost")
    print(f"a retrying client: {len(done)}/60 calls completed across a {outage:.1f} s outage")
    print(json.dumps({
        "rounds": rounds, "acknowledged": len(all_acked), "lost": lost,
        "retrying_client_completed": len(done), "outage_s": round(outage, 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
