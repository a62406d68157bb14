"""Benchmark (not a test): `qnext serve` as a user runs it, measured over gRPC by `qnext bench`
(vLLM's serving metrics) — one server, then one `qnext bench` run per concurrency level.

By default the server runs the full-size Qwen3-Next-80B-A3B config with dummy weights made on
the GPUs (`--load-format dummy`, as `bench_full_size.py`), tensor parallel over `--tp` GPUs;
`--model-path` serves a checkpoint instead (with no GPU: the embedded tiny model on CPU when
neither is given, `--cpu`, which checks the script itself). Readiness comes from the server's
grpc.health.v1 Watch stream. Prints one table row per concurrency and, with `--out DIR`,
keeps each run's JSON and the server log there.

    python scripts/bench_serve.py --tp 4 [--concurrency 8,64,256] [--input-len 1024]
        [--output-len 1024] [--serve-args "--disable-cuda-graph"] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _qnext(*args: str) -> list[str]:
    return [sys.executable, "-m", "qnext.cli.main", *args]


def _wait_serving(address: str, proc: subprocess.Popen, timeout: float) -> None:
    """Follow the health Watch stream until SERVING (it waits for the server to come up)."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            for reply in stub.Watch(health_pb2.HealthCheckRequest(), timeout=timeout,
                                    wait_for_ready=True):
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError as err:
            raise SystemExit(f"server at {address} not serving ({err.code().name}); "
                             f"exit code {proc.poll()}") from err


def _serve_args(args: argparse.Namespace, model_dir: Path | None, port: int) -> list[str]:
    flags = ["serve", "--port", str(port), "--admin-port", str(_free_port())]
    if model_dir is not None:
        flags += ["--model-path", str(model_dir)]
    if not args.cpu:
        flags += ["--tp", str(args.tp), "--dtype", "bfloat16", "--device", "cuda"]
        flags += [] if args.model_path else ["--load-format", "dummy"]
    return flags + shlex.split(args.serve_args)


def _row(c: int, r: dict) -> str:
    return (f"| {c} | {r['completed']}/{r['completed'] + r['failed']} | "
            f"{r['output_throughput']:.0f} | {r['median_ttft_ms']:.1f} | "
            f"{r['p99_ttft_ms']:.1f} | {r['median_tpot_ms']:.2f} | {r['p99_tpot_ms']:.2f} | "
            f"{r['median_itl_ms']:.2f} | {r['median_e2el_ms']:.0f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tp", type=int, default=4)
    ap.add_argument("--model-path", type=Path, help="serve this checkpoint (else dummy 80B)")
    ap.add_argument("--cpu", action="store_true", help="the embedded tiny model on CPU")
    ap.add_argument("--concurrency", default="8,64,256")
    ap.add_argument("--input-len", type=int, default=1024)
    ap.add_argument("--output-len", type=int, default=1024)
    ap.add_argument("--prompts-per-level", type=int, default=2,
                    help="requests per run = this x the concurrency (at least 8)")
    ap.add_argument("--serve-args", default="", help="extra `qnext serve` flags")
    ap.add_argument("--ready-timeout", type=float, default=900.0)
    ap.add_argument("--out", type=Path, help="keep each run's JSON and the server log here")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="qnext-bench-serve-"))
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_path
        if model_dir is None and not args.cpu:
            from bench_full_size import write_config_dir

            model_dir = write_config_dir(Path(tmp))
        port = _free_port()
        log = (out / "server.log").open("w")
        server = subprocess.Popen(_qnext(*_serve_args(args, model_dir, port)),
                                  stdout=subprocess.DEVNULL, stderr=log)
        try:
            _wait_serving(f"127.0.0.1:{port}", server, args.ready_timeout)
            return _levels(args, model_dir, port, out)
        finally:
            server.terminate()
            server.wait(timeout=120)
            log.close()


def _levels(args: argparse.Namespace, model_dir: Path | None, port: int, out: Path) -> int:
    print(f"qnext serve {'(tiny, CPU)' if args.cpu else f'TP{args.tp}'}, "
          f"{args.input_len} in / {args.output_len} out, greedy; times in ms")
    print("| concurrency | ok | output tok/s | TTFT median | TTFT p99 | TPOT median | "
          "TPOT p99 | ITL median | E2E median |")
    print("|---|---|---|---|---|---|---|---|---|")
    failed = 0
    for c in [int(x) for x in args.concurrency.split(",") if x]:
        result = out / f"bench-c{c}.json"
        vocab = ["--model-path", str(model_dir)] if model_dir else ["--vocab-size", "384"]
        run = subprocess.run(_qnext(
            "bench", "--addr", f"127.0.0.1:{port}", *vocab,
            "--num-prompts", str(max(8, args.prompts_per_level * c)),
            "--input-len", str(args.input_len), "--output-len", str(args.output_len),
            "--max-concurrency", str(c), "--warmup-requests", str(min(c, 8)), "--json",
            "--save-result", str(result)), capture_output=True, text=True)
        if not result.exists():
            print(f"| {c} | bench failed (exit {run.returncode}): "
                  f"{run.stderr.strip()[-300:]} |")
            failed += 1
            continue
        r = json.loads(result.read_text())
        failed += r["failed"] > 0
        print(_row(c, r), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
