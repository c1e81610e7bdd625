"""`embedsense-server` (also `python -m embedsense.server`): run the gRPC server.

    embedsense-server --data-dir ./data --port 50051

Every flag falls back to its EMBEDSENSE_* variable (EMBEDSENSE_PORT, EMBEDSENSE_DTYPE...),
then to the defaults in ServerSettings and EngineConfig. The client's `embedsense serve`
runs this program: the client package imports nothing of the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from embedsense.server.api.app import StartupError, serve
from embedsense.server.api.observability import configure_logging
from embedsense.server.api.settings import ServerSettings


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="embedsense-server", description=__doc__.split("\n")[0])
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--data-dir", help="the faiss backend's store and snapshots")
    p.add_argument("--index-backend", choices=["faiss", "milvus"], help="default: faiss")
    p.add_argument("--milvus-uri", help="milvus: ./index.db (milvus-lite) or http://host:19530"
                   " (the token, if any, from EMBEDSENSE_MILVUS_TOKEN)")  # fmt: skip
    p.add_argument("--replica", help="this server's name in Info and logs (default host:port)")
    p.add_argument("--model")
    p.add_argument("--api-key", help="comma-separated for several")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--threads", type=int)
    p.add_argument("--tls-cert", help="PEM certificate: serve TLS")
    p.add_argument("--tls-key", help="PEM key of --tls-cert")
    p.add_argument("--tls-client-ca", help="PEM CA: require client certificates (mTLS)")
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics on this port")
    p.add_argument("--http-port", type=int,
                   help="the OpenAI- and TEI-style HTTP API's port (default: off)")  # fmt: skip
    p.add_argument("--log-format", choices=["json", "text"], help="default: json")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    log_format = args.log_format or os.environ.get("EMBEDSENSE_LOG_FORMAT", "json")
    configure_logging(json_lines=log_format == "json")
    try:
        settings = ServerSettings.from_env(
            host=args.host, port=args.port, data_dir=args.data_dir, model=args.model,
            index_backend=args.index_backend, milvus_uri=args.milvus_uri, replica=args.replica,
            api_key=args.api_key, device=args.device, dtype=args.dtype, threads=args.threads,
            tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
            metrics_port=args.metrics_port, http_port=args.http_port,
        )  # fmt: skip
        asyncio.run(serve(settings))
    except (StartupError, ValueError) as err:
        print(f"embedsense-server: cannot start: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
