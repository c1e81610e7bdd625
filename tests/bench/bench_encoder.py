"""Our encoder vs transformers on the same weights, inputs, padded batches and threads.

Models: the bundled e5-small default (real weights) and the bert-base-chinese shape
(random weights: speed does not depend on their values). Reports tokens/s (real, unpadded
tokens), the ratio ours/reference, and model FLOP utilisation (MFU) against this machine's
measured float32 matmul peak. Then `torch.compile` (inductor, dynamic shapes) of our
layers against the same layers eager, on e5-small's batches sorted and in arrival order
(attention on length groups, as the engine runs on a CPU): the first pass's seconds with an
empty compile cache (what a server start would pay) and the speed ratio, or why it cannot
run. The last line is one JSON object.

    python tests/bench/bench_encoder.py [--threads 2] [--texts 256] [--batch 32]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import bert_reference_for  # noqa: E402  (tests/helpers.py)
from workload import chinese_texts  # noqa: E402  (tests/workload.py)

from embedsense.model import TextRole, load_model
from embedsense.model.checkpoint import (
    encoder_config_from_hf,
    encoder_from_hf_state_dict,
    to_hf_state_dict,
)
from embedsense.model.tokenizer import pad_sequences


def matmul_peak_flops(threads: int, n: int = 2048, repeats: int = 8) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def model_flops(cfg, lengths: list[int]) -> float:
    """FLOPs a forward needs for these real token counts (matmuls; padding not counted)."""
    C, F, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    per_token_dense = 2 * (4 * C * C + 2 * C * F) * L  # qkv + output projection + FFN
    return sum(n * per_token_dense + 4 * n * n * C * L for n in lengths)  # + scores and mixing


def time_passes(runs: dict, batches, repeats: int) -> dict[str, float]:
    """Median seconds per pass over all batches for each run, the runs interleaved pass by
    pass so that drift in the machine's speed hits both alike (after a warm-up)."""
    for run in runs.values():
        for ids, mask in batches[:2]:
            run(ids, mask)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            for ids, mask in batches:
                run(ids, mask)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def compare(name: str, ours, reference, batches, lengths, peak: float, repeats: int) -> dict:
    tokens = sum(lengths)
    with torch.inference_mode():
        seconds = time_passes(
            {"ours": ours, "ref": lambda i, m: reference(input_ids=i, attention_mask=m)},
            batches,
            repeats,
        )
    t_ours, t_ref = seconds["ours"], seconds["ref"]
    flops = model_flops(ours.cfg, lengths)
    result = {
        "model": name,
        "ours_tokens_per_s": round(tokens / t_ours, 1),
        "reference_tokens_per_s": round(tokens / t_ref, 1),
        "ratio": round(t_ref / t_ours, 3),
        "mfu": round(flops / t_ours / peak, 3),
        "reference_mfu": round(flops / t_ref / peak, 3),
    }
    print(
        f"{name:<28} ours {result['ours_tokens_per_s']:>8.1f} tok/s   "
        f"transformers {result['reference_tokens_per_s']:>8.1f} tok/s   "
        f"ratio {result['ratio']:.3f}   "
        f"MFU ours {result['mfu']:.1%} / ref {result['reference_mfu']:.1%}"
    )
    return result


def compiled_copy(encoder: torch.nn.Module) -> torch.nn.Module:
    """A copy of `encoder` whose layers run under torch.compile (inductor, dynamic shapes:
    one compilation for every batch shape); the embeddings and packing stay eager."""
    twin = copy.deepcopy(encoder)
    twin.layers = torch.nn.ModuleList(torch.compile(layer, dynamic=True) for layer in twin.layers)
    return twin


def compile_section(encoder, workloads: dict, repeats: int) -> dict:
    """torch.compile vs eager per workload: first-pass seconds (compiling, cold cache) and
    eager seconds / compiled seconds; {"error": ...} where no compiler works here."""
    result: dict = {}
    for name, (batches, groups) in workloads.items():
        encoder.attention_groups = groups
        twin = compiled_copy(encoder)
        with torch.inference_mode():
            start = time.perf_counter()
            try:
                for ids, mask in batches:
                    twin(ids, mask)
            except Exception as err:  # noqa: BLE001 - no C++ compiler, unsupported op...
                print(f"torch.compile: cannot run here: {type(err).__name__}: {err}")
                encoder.attention_groups = 1
                return {"error": f"{type(err).__name__}: {err}"[:300]}
            warmup = time.perf_counter() - start
            drift = max(
                float((twin(ids, mask).last_hidden_state
                       - encoder(ids, mask).last_hidden_state).abs().max())
                for ids, mask in batches[:2]
            )  # fmt: skip
            seconds = time_passes({"eager": encoder, "compiled": twin}, batches, repeats)
        ratio = seconds["eager"] / seconds["compiled"]
        result[name] = {"first_pass_s": round(warmup, 1), "speedup": round(ratio, 3),
                        "max_abs_diff": drift}  # fmt: skip
        print(f"torch.compile, {name:<42} first pass {warmup:5.1f} s (compiling), "
              f"{ratio:.3f}x eager, max |diff| {drift:.1e}")  # fmt: skip
    encoder.attention_groups = 1
    return result


def padded_batches(ids_per_text: list[list[int]], batch_size: int, pad_id: int):
    return [
        pad_sequences(ids_per_text[start : start + batch_size], pad_id)
        for start in range(0, len(ids_per_text), batch_size)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_peak_flops(args.threads)
    print(
        f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, "
        f"torch {torch.__version__}, fp32 matmul peak {peak / 1e9:.1f} GFLOP/s"
    )

    texts = chinese_texts(args.texts)
    e5 = load_model()
    tokenized = e5.tokenizer.encode_batch(texts, TextRole.PASSAGE)
    lengths = [len(t) for t in tokenized]
    batches = padded_batches([t.ids for t in tokenized], args.batch, e5.tokenizer.pad_id)
    padding = 1 - sum(lengths) / sum(ids.numel() for ids, _ in batches)
    print(
        f"workload: {len(texts)} Chinese texts, {min(lengths)}-{max(lengths)} tokens "
        f"({sum(lengths)} in all), batches of {args.batch} in arrival order, "
        f"{padding:.0%} of each padded batch is padding"
    )

    e5_reference = bert_reference_for(e5.encoder.cfg)
    e5_reference.load_state_dict(to_hf_state_dict(e5.encoder))
    results = [
        compare(
            "multilingual-e5-small", e5.encoder, e5_reference, batches, lengths, peak, args.repeats
        )
    ]
    del e5_reference

    torch.manual_seed(0)
    bert_reference = BertModel(BertConfig(vocab_size=21128), add_pooling_layer=False).eval()
    bert_ours = encoder_from_hf_state_dict(
        encoder_config_from_hf(bert_reference.config.to_dict()), bert_reference.state_dict()
    )
    # BERT splits Chinese per character: one token per character, plus [CLS] and [SEP].
    gen = torch.Generator().manual_seed(0)
    bert_ids = [
        [101] + torch.randint(672, 8000, (len(t),), generator=gen).tolist() + [102] for t in texts
    ]
    bert_lengths = [len(x) for x in bert_ids]
    bert_batches = padded_batches(bert_ids, args.batch, 0)
    results.append(
        compare(
            "bert-base-chinese (shape)",
            bert_ours,
            bert_reference,
            bert_batches,
            bert_lengths,
            peak,
            args.repeats,
        )
    )

    # A cold cache, so the first pass shows what a fresh server start would pay.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="embedsense-inductor-")
    by_length = sorted((t.ids for t in tokenized), key=len)
    compiled = compile_section(
        e5.encoder,
        {
            "e5-small, sorted batches": (
                padded_batches(by_length, args.batch, e5.tokenizer.pad_id), 1),
            "e5-small, arrival order, 4 length groups": (batches, 4),
        },
        max(args.repeats, 5),
    )  # fmt: skip

    summary = {**results[0], "models": results, "threads": args.threads,
               "matmul_peak_gflops": round(peak / 1e9, 1), "torch_compile": compiled}  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
