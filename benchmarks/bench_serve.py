"""`vesper serve` under load: N concurrent clients on loopback vs single-request `vesper generate`, same model.

    python benchmarks/bench_serve.py [--model CKPT] [--preset tiny] [--clients 1,4,8] [--duration 20]
                                     [--max-requests 400] [--max-tokens 64] [--prompt-len 16] [--max-batch-size 8]
                                     [--threads 1]

Without --model a random-init VesperLM of --preset with the byte tokenizer is written to a temporary folder
(speed does not depend on the weights). Every process (this one, each `vesper generate`, `vesper serve`) runs
torch with --threads intra-op threads (OMP_NUM_THREADS), so the arms differ only in how requests are run.
Two baselines, one request at a time: `vesper generate` run once per seed (its own "N tokens in S s" line:
generation only, model load excluded, but each run is a fresh process, so its first forward passes are cold),
and the same engine warm in this process (``Generator.stream`` after one warm-up request, the code path of
`vesper generate --prompt`). Then one `vesper serve` process is started on a free loopback port and, for each
client count, that many clients send completions back to back (prompts of equal token length, temperature
0.8, a distinct seed per request, so the work per request does not depend on the client count) for at most
--duration seconds or --max-requests requests. Throughput is completion tokens over the wall time of the level; latency is per request, end to end
(HTTP included); errors are non-200 answers or transport failures. Each level starts after the previous
one has drained. Results: benchmarks/results/bench_serve.json (schema: benchmarks/_results.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _results import ROOT, write_results

PROMPT_WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly watch from far hills".split()


def make_model(folder: Path, preset: str) -> Path:
    from vesper_core.checkpoint import save_weights
    from vesper_core.model import VesperLM
    from vesper_core.presets import model_config
    from vesper_data.tokenizers.builtin import byte_tokenizer

    tok = byte_tokenizer()
    torch.manual_seed(0)
    model = VesperLM(model_config(preset, vocab_size=tok.vocab_size)).eval()
    run = folder / f"bench-{preset}"
    run.mkdir(parents=True)
    tok.save(run / "tokenizer.json")
    save_weights(run / "checkpoint-final.safetensors", model, extra={"tokenizer_sha256": tok.sha256(), "step": 0})
    return run


def prompt_text(i: int, length: int) -> str:
    """A prompt of exactly ``length`` bytes (= tokens with the byte tokenizer), different for each ``i``."""
    words = [PROMPT_WORDS[(i * 7 + k) % len(PROMPT_WORDS)] for k in range(length)]
    return " ".join(words)[:length].ljust(length, ".")


def vesper(*args) -> list[str]:
    return [sys.executable, "-m", "vesper_cli", *map(str, args)]


def baseline(model: Path, args, seeds: range) -> dict:
    tokens = seconds = 0.0
    latencies = []
    for seed in seeds:
        out = subprocess.run(vesper("generate", "--model", model, "--prompt", prompt_text(seed, args.prompt_len),
                                    "--max-tokens", args.max_tokens, "--temperature", "0.8", "--seed", seed),
                             capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600)
        found = re.search(r"(\d+) tokens in ([\d.]+) s", out.stderr)
        if out.returncode != 0 or not found:
            raise SystemExit(f"vesper generate failed: {out.stderr.strip()[-400:]}")
        tokens += int(found.group(1))
        seconds += float(found.group(2))
        latencies.append(float(found.group(2)))
    return {"requests": len(latencies), "completion_tokens": int(tokens), "seconds": seconds,
            "tokens_per_sec": tokens / seconds, "p50_latency_s": statistics.median(latencies),
            "p99_latency_s": _p99(latencies), "errors": 0}


THREADS = {"n": 1}


def _env() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(THREADS["n"]),
           "MKL_NUM_THREADS": str(THREADS["n"])}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def baseline_engine(model: Path, args, seeds: range) -> dict:
    from vesper_cli.engine.generation import SamplingConfig, load_generator

    generator = load_generator(model)

    def request(seed: int) -> None:
        sampling = SamplingConfig(max_tokens=args.max_tokens, temperature=0.8, seed=seed)
        for _piece in generator.stream(prompt_text(seed, args.prompt_len), sampling):
            pass

    request(10_000)  # warm-up
    tokens = seconds = 0.0
    latencies = []
    for seed in seeds:
        start = time.perf_counter()
        request(seed)
        latencies.append(time.perf_counter() - start)
        tokens += generator.stats["new_tokens"]
        seconds += latencies[-1]
    return {"requests": len(latencies), "completion_tokens": int(tokens), "seconds": seconds,
            "tokens_per_sec": tokens / seconds, "p50_latency_s": statistics.median(latencies),
            "p99_latency_s": _p99(latencies), "errors": 0}


def _p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, args) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen(vesper("serve", "--model", model, "--port", port, "--model-name", "bench",
                                   "--max-batch-size", args.max_batch_size, "--max-queue", 64),
                            env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"vesper serve exited: {proc.stderr.read()[-400:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("vesper serve did not come up in 180 s")


async def load_level(url: str, clients: int, args, first_seed: int) -> dict:
    import httpx

    latencies: list[float] = []
    tokens = errors = issued = 0
    stop_at = time.monotonic() + args.duration

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens, errors, issued
        while time.monotonic() < stop_at and issued < args.max_requests:
            seed = first_seed + issued
            issued += 1
            body = {"model": "bench", "prompt": prompt_text(seed, args.prompt_len), "max_tokens": args.max_tokens,
                    "temperature": 0.8, "seed": seed}
            start = time.perf_counter()
            try:
                response = await http.post(f"{url}/v1/completions", json=body)
            except httpx.HTTPError:
                errors += 1
                continue
            if response.status_code != 200:
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)
            tokens += response.json()["usage"]["completion_tokens"]

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    wall = time.perf_counter() - start
    return {"requests": len(latencies), "completion_tokens": tokens, "seconds": wall,
            "tokens_per_sec": tokens / wall, "p50_latency_s": statistics.median(latencies) if latencies else None,
            "p99_latency_s": _p99(latencies) if latencies else None, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a checkpoint or run folder (default: a random-init --preset)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--clients", default="1,4,8", help="client counts, comma-separated")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per client count, at most")
    parser.add_argument("--max-requests", type=int, default=400, help="requests per client count, at most")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=16, help="prompt bytes (= tokens with the byte tokenizer)")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--baseline-requests", type=int, default=3, help="`vesper generate` runs")
    parser.add_argument("--engine-requests", type=int, default=8, help="warm in-process engine requests")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads in every process")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    THREADS["n"] = args.threads
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or make_model(Path(tmp), args.preset)
        print(f"model {model}; prompt {args.prompt_len} tokens, up to {args.max_tokens} new, temperature 0.8")
        cli = baseline(model, args, range(args.baseline_requests))
        print(f"  vesper generate, a process per request: {cli['tokens_per_sec']:.1f} tok/s "
              f"({cli['requests']} requests)")
        before = baseline_engine(model, args, range(args.engine_requests))
        print(f"  the engine warm, one request at a time: {before['tokens_per_sec']:.1f} tok/s "
              f"({before['requests']} requests)")
        port = free_port()
        proc = start_server(model, port, args)
        url = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(load_level(url, 1, _warm(args), 10_000))  # first-request costs out of the levels
            levels = []
            for n, clients in enumerate(counts):
                result = asyncio.run(load_level(url, clients, args, 1000 * (n + 1)))
                levels.append((clients, result))
                print(f"  vesper serve, {clients} client(s): {result['tokens_per_sec']:.1f} tok/s, p50 "
                      f"{result['p50_latency_s']:.2f} s, p99 {result['p99_latency_s']:.2f} s, "
                      f"{result['requests']} requests, {result['errors']} errors")
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        after = baseline_engine(model, args, range(args.engine_requests))
        print(f"  the engine warm again, after the server: {after['tokens_per_sec']:.1f} tok/s")
        single = max(before, after, key=lambda r: r["tokens_per_sec"])  # the baseline's better moment

    common = {"prompt_tokens": args.prompt_len, "max_tokens": args.max_tokens, "temperature": 0.8,
              "threads": args.threads,
              "model": str(args.model) if args.model else f"random-init {args.preset}, byte tokenizer"}
    rows = [{"arm": "vesper generate (a process per request)", "clients": 1, **common, **cli,
             "speedup_vs_generate": cli["tokens_per_sec"] / single["tokens_per_sec"]},
            {"arm": "generate engine, warm (one request at a time)", "clients": 1, **common, **single,
             "speedup_vs_generate": 1.0}]
    for clients, result in levels:
        rows.append({"arm": "vesper serve", "clients": clients, "max_batch_size": args.max_batch_size, **common,
                     **result, "speedup_vs_generate": result["tokens_per_sec"] / single["tokens_per_sec"]})
    print()
    print("| arm | clients | tok/s | vs generate | p50 latency | p99 latency | requests | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['arm']} | {r['clients']} | {r['tokens_per_sec']:.1f} | {r['speedup_vs_generate']:.2f}x | "
              f"{r['p50_latency_s']:.2f} s | {r['p99_latency_s']:.2f} s | {r['requests']} | {r['errors']} |")
    notes = ["speedup_vs_generate: tokens/s over the warm engine's, one request at a time (same code as "
             "`vesper generate --prompt`, same threads), measured before and after the server runs; the faster "
             f"of the two is the baseline ({before['tokens_per_sec']:.1f} and {after['tokens_per_sec']:.1f} tok/s)",
             f"load average when done: {os.getloadavg()[0]:.1f} (1 min) on {os.cpu_count()} CPUs",
             "generate's latency is generation only (its own timer); serve's is end to end over HTTP on loopback",
             "every prompt has --prompt-len tokens (a request joins a running batch when its prompt is no longer "
             "than the batch's length); a distinct seed per request, so the work per request does not depend on "
             "the client count",
             f"torch intra-op threads {args.threads} in every process, CPUs {os.cpu_count()}; the machine may be "
             f"shared with other jobs (numbers are from one run)"]
    if not args.no_save:
        path = write_results("serve", rows, notes=notes, computed=["tokens_per_sec", "speedup_vs_generate"])
        print(f"wrote {path}")


def _warm(args):
    warm = argparse.Namespace(**vars(args))
    warm.duration, warm.max_requests = 5.0, 2
    return warm


if __name__ == "__main__":
    main()
