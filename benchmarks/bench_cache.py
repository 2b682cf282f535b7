"""Token cache and streaming numbers: build throughput vs raw encode_batch, open time, streaming RSS.

    python benchmarks/bench_cache.py [--build-mb 32] [--cache-gb 1] [--stream-gb 2] [--workdir /tmp/vesper_bench]

1. ``vesper_data.cache.build_cache`` tokens/s against the floor in the same run: read the file,
   ``tokenizer.encode_batch`` on the same pieces, ``np.array(uint32).tofile`` (ratio; goal >= 0.9).
2. Time to open a ~1 GB cache of random uint32 tokens (header + index checks + memmap) and read
   one batch (goal < 0.1 s).
3. Peak RSS (VmHWM, via getrusage of the child) of ``vesper train --streaming`` on a generated
   text file of ``--stream-gb`` GB for a few nano-model steps, and of one full streamed epoch over
   a smaller file (goal: well under 1 GB).

Generated files live in ``--workdir`` (not committed) and are deleted unless ``--keep``.
Results are printed and saved to benchmarks/results/bench_cache.json (schema: benchmarks/_results.py),
one row per part (build, open, streaming, and one per loader-only epoch chunk size).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _results import write_results  # noqa: E402
from vesper_data.cache import TokenCache, build_cache  # noqa: E402
from vesper_data.cache.format import CacheHeader  # noqa: E402
from vesper_data.sources import split_text  # noqa: E402
from vesper_data.tokenizers import train_bpe  # noqa: E402

BLOCK = 4 << 20


def synthetic_block(seed: int = 0) -> bytes:
    """~4 MiB of Zipf-distributed pseudo-words in lines (with some non-ASCII)."""
    rng = random.Random(seed)
    syll = ["ka", "lo", "mi", "ten", "ra", "sü", "vel", "or", "an", "pé", "qu", "is", "dor", "ne", "tha"]
    words = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(5000)]
    weights = [1 / (i + 1) for i in range(len(words))]
    out, size = [], 0
    while size < BLOCK:
        line = " ".join(rng.choices(words, weights, k=rng.randint(5, 25))) + ".\n"
        out.append(line)
        size += len(line.encode())
    return "".join(out).encode()


def write_text(path: Path, num_bytes: int, block: bytes) -> None:
    with path.open("wb") as fh:
        for _ in range(max(1, num_bytes // len(block))):
            fh.write(block)


def raw_floor(path: Path, tokenizer, out: Path, batch_chars: int = 1 << 22) -> tuple[int, float]:
    """Read, encode_batch the same 64K-character pieces, write uint32: the fastest this can be."""
    start = time.perf_counter()
    total = 0
    with path.open("rb") as src, out.open("wb") as dst:
        while True:
            block = src.read(batch_chars)
            if not block:
                break
            pieces = split_text(block.decode("utf-8", errors="replace"))
            for ids in tokenizer.encode_batch(pieces):
                arr = np.array(ids, dtype=np.uint32)
                arr.tofile(dst)
                total += len(arr)
    return total, time.perf_counter() - start


def bench_build(work: Path, block: bytes, mb: int) -> dict:
    text = work / "build.txt"
    write_text(text, mb << 20, block)
    tok = train_bpe([p for p in split_text(block.decode())], 8192)
    raw_floor(text, tok, work / "warm.u32")  # warm the page cache and the tokenizer
    rows = []
    for _ in range(2):
        tokens, raw_s = raw_floor(text, tok, work / "raw.u32")
        built = build_cache([str(text)], tok, work / "cache", seq_len=512, name="build")
        rows.append((tokens / raw_s, built.tokens_per_sec, built.header.total_tokens))
    raw_tps = max(r[0] for r in rows)
    cache_tps = max(r[1] for r in rows)
    return {"text_mib": round(text.stat().st_size / 2**20, 1), "tokens": rows[-1][2],
            "raw_encode_batch_tofile_tokens_per_s": round(raw_tps), "cache_build_tokens_per_s": round(cache_tps),
            "ratio": round(cache_tps / raw_tps, 3), "tokenizer": f"byte-level BPE vocab {tok.vocab_size}"}


def bench_open(work: Path, gb: float) -> dict:
    path = work / "big_cache.bin"
    total = int(gb * (1 << 30)) // 4
    num_seq = 1000
    rng = np.random.default_rng(0)
    with path.open("wb") as fh:
        fh.write(CacheHeader(1, total, num_seq, 50257, 1024).pack())
        left = total
        while left:
            n = min(left, 1 << 25)
            rng.integers(0, 50257, n, dtype=np.uint32).tofile(fh)
            left -= n
    np.linspace(0, total, num_seq + 1).astype("<u8").tofile(path.with_suffix(".idx"))
    os.sync()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        cache = TokenCache.open(path)
        starts = rng.integers(0, total - 513, 8)
        batch = np.asarray(cache.tokens[starts[:, None] + np.arange(513)], dtype=np.int64)
        times.append(time.perf_counter() - start)
        del cache, batch
    return {"cache_gib": round(path.stat().st_size / 2**30, 2), "open_and_first_batch_s_median": round(sorted(times)[2], 5),
            "open_and_first_batch_s_first": round(times[0], 5)}


def child_peak_rss_mib(cmd: list[str], log: Path) -> tuple[float, float, str]:
    """Run ``cmd``; return (this child's peak RSS in MiB from wait4's rusage, seconds, stderr tail)."""
    start = time.perf_counter()
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    tail = log.read_text()[-2000:]
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{tail}")
    return usage.ru_maxrss / 1024, seconds, tail


def bench_stream(work: Path, block: bytes, gb: float, full_mb: int) -> dict:
    big = work / "stream_big.txt"
    write_text(big, int(gb * (1 << 30)), block)
    tok_path = work / "tokenizer.json"
    train_bpe([p for p in split_text(block.decode())], 8192).save(tok_path)
    train = [sys.executable, "-m", "vesper_cli", "train", "--dataset", str(big), "--streaming", "--chunk-mb", "16",
             "--tokenizer", str(tok_path), "--model-size", "nano", "--seq-len", "256", "--batch-size", "8",
             "--dtype", "f32", "--max-steps", "20", "--save-every", "0", "--output-dir", str(work / "run")]
    rss_train, train_s, _ = child_peak_rss_mib(train, work / "train.log")
    small_text = work / "small.txt"
    small_text.write_bytes(block[:1 << 20])
    in_memory = [*train[:5], str(small_text), *train[9:]]  # same run on 1 MiB, no --streaming
    in_memory[in_memory.index("--output-dir") + 1] = str(work / "run_mem")
    rss_mem, _, _ = child_peak_rss_mib(in_memory, work / "train_mem.log")
    small = work / "stream_full.txt"
    write_text(small, full_mb << 20, block)
    epochs = {}
    for chunk in (4, 16, 64):
        epoch = [sys.executable, "-c", (
            "import sys, time; from vesper_data.streaming import StreamingLoader; "
            "from vesper_data.tokenizers import load_tokenizer; "
            f"tok = load_tokenizer({str(tok_path)!r}); t = time.perf_counter(); "
            f"loader = StreamingLoader({str(small)!r}, tok, 256, 8, chunk_bytes={chunk} << 20); "
            "n = sum(1 for _ in loader); print(f'batches={n} seconds={time.perf_counter() - t:.1f}', file=sys.stderr)")]
        rss, _, tail = child_peak_rss_mib(epoch, work / "epoch.log")
        epochs[f"chunk_{chunk}_mib"] = {"peak_rss_mib": round(rss), "run": tail.strip().splitlines()[-1]}
    return {"stream_file_gib": round(big.stat().st_size / 2**30, 2), "chunk_mib": 16,
            "train_20_steps_streaming_peak_rss_mib": round(rss_train), "train_seconds": round(train_s, 1),
            "train_20_steps_in_memory_1mib_peak_rss_mib": round(rss_mem),
            "full_epoch_file_mib": full_mb, "full_epoch_loader_only": epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-mb", type=int, default=32)
    parser.add_argument("--cache-gb", type=float, default=1.0)
    parser.add_argument("--stream-gb", type=float, default=2.0)
    parser.add_argument("--full-epoch-mb", type=int, default=128)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vesper_bench"))
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    block = synthetic_block()
    rows = []
    try:
        build = bench_build(args.workdir, block, args.build_mb)
        print(json.dumps(build), flush=True)
        rows.append({"part": "build", **build})
        opened = bench_open(args.workdir, args.cache_gb)
        print(json.dumps(opened), flush=True)
        rows.append({"part": "open", **opened})
        stream = bench_stream(args.workdir, block, args.stream_gb, args.full_epoch_mb)
        print(json.dumps(stream), flush=True)
        epochs = stream.pop("full_epoch_loader_only")
        rows.append({"part": "streaming_train", **stream})
        for name, epoch in epochs.items():
            rows.append({"part": "streaming_epoch_loader_only", "chunk_mib": int(name.split("_")[1]),
                         "file_mib": stream["full_epoch_file_mib"], **epoch})
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    if not args.no_save:
        notes = ["build: best of 2 runs each; ratio = cache build tokens/s over the raw encode_batch + tofile floor",
                 "open: 5 opens of a random-token cache, median and first; peak RSS from wait4's rusage of the child"]
        path = write_results("cache", rows, notes=notes, computed=["ratio"], device="cpu", stem="bench_cache")
        print(f"saved {path}")


if __name__ == "__main__":
    main()
