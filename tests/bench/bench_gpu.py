"""The engine on a GPU: bert-base-chinese shape, fp32 vs fp16 vs bf16, max_batch_tokens 16k.

A bert-base-chinese-shaped model (random weights: speed does not depend on their values;
a per-character vocabulary so Chinese splits as the real one does) is saved as a Hugging
Face directory and loaded through the normal path. All texts of a mixed-length Chinese
workload are sent at once, one text per request, and the engine batches them by its token
budget. Reports tokens/s (real tokens), time in the model, padding, and model FLOP
utilisation against this GPU's measured matmul peak in the same dtype. Without CUDA it says
so and stops (run with --device cpu to check the script itself on a CPU).
Last line: one JSON object.

    python tests/bench/bench_gpu.py [--texts 8192] [--max-batch-tokens 16384]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_encoder import model_flops
from transformers import BertConfig, BertModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workload import chinese_texts  # noqa: E402  (tests/workload.py)

from embedsense.model import TextRole, load_model  # noqa: E402
from embedsense.server.config import EngineConfig  # noqa: E402
from embedsense.server.engine import Engine, EngineStats  # noqa: E402

BERT_CHINESE_VOCAB = 21128  # [PAD], [unused1-99], [UNK], [CLS], [SEP], [MASK], then pieces


def bert_chinese_shaped_dir(root: Path) -> Path:
    """A loadable HF directory with bert-base-chinese's shape and a per-character vocab."""
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=BERT_CHINESE_VOCAB), add_pooling_layer=False).save_pretrained(
        root
    )
    specials = ["[PAD]", *(f"[unused{i}]" for i in range(1, 100)), "[UNK]", "[CLS]", "[SEP]"]
    specials.append("[MASK]")
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + BERT_CHINESE_VOCAB - len(specials))]
    (root / "vocab.txt").write_text("\n".join(specials + chars) + "\n", encoding="utf-8")
    return root


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 8192) -> float:
    """FLOP/s of the best of several n×n matmuls in this dtype (the MFU denominator)."""
    if device.type == "cpu":
        n = 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(10):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


async def embed_all(engine: Engine, texts: list[str]) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(engine.embed([t], role=TextRole.PASSAGE) for t in texts))
    return time.perf_counter() - start


def measure(model, texts, lengths, device, dtype: str, max_batch_tokens: int) -> dict:
    config = EngineConfig(
        device=str(device),
        dtype=dtype,
        max_batch_tokens=max_batch_tokens,
        max_queued_tokens=sum(lengths) + 1,
        max_concurrent_requests=len(texts) + 1,
    )
    engine = Engine(config, model).start()
    try:
        asyncio.run(embed_all(engine, texts[: len(texts) // 4]))  # warm: kernels, allocator
        engine.stats = EngineStats()  # count the measured run only
        seconds = asyncio.run(embed_all(engine, texts))
        stats = engine.stats
        offline = offline_seconds(engine, model, texts, device, max_batch_tokens)
    finally:
        engine.close()
    peak = matmul_peak(device, engine.runner.dtype)
    tokens = sum(lengths)
    flops = model_flops(model.encoder.cfg, lengths)
    row = {
        "dtype": dtype,
        "tokens_per_s": round(tokens / seconds, 1),
        "texts_per_s": round(len(texts) / seconds, 1),
        "model_seconds_share": round(stats.model_seconds / seconds, 3),
        "batches": stats.batches,
        "mean_rows_per_batch": round(stats.rows / stats.batches, 1),
        "padding_fraction": round(1 - stats.real_tokens / stats.padded_tokens, 3),
        "matmul_peak_tflops": round(peak / 1e12, 1),
        "mfu": round(flops / seconds / peak, 3),
        "offline_tokens_per_s": round(tokens / offline, 1),
        "engine_vs_offline": round(offline / seconds, 3),
    }
    print(
        f"{dtype:<9} {row['tokens_per_s']:>10.0f} tok/s  {row['texts_per_s']:>8.0f} texts/s  "
        f"MFU {row['mfu']:.1%} of {row['matmul_peak_tflops']} TFLOP/s  "
        f"in model {row['model_seconds_share']:.0%}  padding {row['padding_fraction']:.1%}  "
        f"{row['mean_rows_per_batch']} rows/batch; offline sorted batches "
        f"{row['offline_tokens_per_s']:.0f} tok/s (engine {row['engine_vs_offline']:.2f}x)"
    )
    return row


def offline_seconds(engine: Engine, model, texts, device, max_batch_tokens: int) -> float:
    """The same texts run by the same backend with no server around it: sorted by length,
    cut into batches by the same token budget — what the engine's batching is measured by."""
    ids = sorted((t.ids for t in model.tokenizer.encode_batch(texts, TextRole.PASSAGE)), key=len)
    batches, batch = [], []
    for seq in ids:
        if batch and (len(batch) + 1) * len(seq) > max_batch_tokens:
            batches.append(batch)
            batch = []
        batch.append(seq)
    batches.append(batch)
    sync(device)
    start = time.perf_counter()
    for batch in batches:
        engine.runner.run(batch, [None] * len(batch))
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=8192)
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: the GPU benchmark did not run")
        print(json.dumps({"skipped": "no CUDA device"}))
        return
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    dtypes = ["float32", "float16", "bfloat16"] if device.type == "cuda" else ["float32"]

    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(str(bert_chinese_shaped_dir(Path(tmp))))
    texts = chinese_texts(args.texts)
    lengths = [len(t) for t in model.tokenizer.encode_batch(texts, TextRole.PASSAGE)]
    print(
        f"{name}, torch {torch.__version__}: bert-base-chinese shape, {len(texts)} texts of "
        f"{min(lengths)}-{max(lengths)} tokens ({sum(lengths)} in all), one per request, "
        f"max_batch_tokens {args.max_batch_tokens}; fp32 matmuls without TF32 (torch default)"
    )
    # fp32 first: the runner casts the model in place, and a cast down is not undone.
    rows = [
        measure(model, texts, lengths, device, dtype, args.max_batch_tokens) for dtype in dtypes
    ]
    print(json.dumps({"device": name, "max_batch_tokens": args.max_batch_tokens, "runs": rows}))


if __name__ == "__main__":
    main()
