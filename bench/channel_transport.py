"""The delta channel's transport, side by side: CPU per message of the sending replica and the receiving router when
messages arrive apart (cold wakes, as at low concurrency), plain TCP on the event loop against ZeroMQ PUSH/PULL; and
the replica's read of vLLM's engine-core socket (ZeroMQ), through pyzmq's asyncio socket or EngineOutputReader.

    .venv/bin/python bench/channel_transport.py            # ~3 min; writes bench/results/channel_transport.json
    .venv/bin/python bench/channel_transport.py --quick

* tcp:  the platform's channel (`DeltaPublisher` -> `DeltaSubscriber`: asyncio TCP, length-framed msgpack);
* zmq:  the channel before (a PUSH socket sending NOBLOCK from the loop -> a zmq.asyncio PULL socket read in a loop
        task), same msgpack messages;
* timer: the sender's own timer wakes alone (no message): the floor under both senders;
* zmq-direct-read: the zmq sender, the PULL socket read by `engines/vllm_outputs.EngineOutputReader` (what vLLM's
        output task reads through in our replicas; "zmq" is how vLLM reads it: `await recv_multipart(copy=False)`).

Each message is one delta of one stream (what a c=1 stream sends per tick); the gap between messages is the tick.
CPU from /proc (psutil) of each process over the run; rounds interleave the transports; medians are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
import psutil  # noqa: E402
from bench_common import RESULTS_DIR, cpu_model, progress  # noqa: E402
from procstats import cpu_seconds  # noqa: E402

TRANSPORTS = ("tcp", "zmq", "timer", "zmq-direct-read")


def _receiver(transport: str, ready) -> None:
    import uvloop

    async def main() -> None:
        if transport.startswith("zmq"):
            import zmq
            import zmq.asyncio
            from gemma_serving.deltas.wire import decoder
            from gemma_serving.engines.vllm_outputs import EngineOutputReader

            sock = zmq.asyncio.Context.instance().socket(zmq.PULL)
            port = sock.bind_to_random_port("tcp://127.0.0.1")
            ready.send(f"tcp://127.0.0.1:{port}")
            read = sock if transport == "zmq" else EngineOutputReader(sock, asyncio.get_running_loop())
            decode = decoder().decode
            while True:
                decode((await read.recv_multipart(copy=False))[0].buffer)
        from gemma_serving.deltas.subscriber import DeltaSubscriber

        sub = DeltaSubscriber("127.0.0.1", "127.0.0.1")
        await sub.start()
        ready.send(sub.address)
        await asyncio.sleep(3600)

    uvloop.install()
    asyncio.run(main())


def _sender(transport: str, address: str, gap_s: float, messages: int, go, done) -> None:
    import uvloop

    async def main() -> None:
        from gemma_serving.deltas.publisher import DeltaPublisher
        from gemma_serving.deltas.wire import ENCODER, Delta
        from gemma_serving.engines.types import Chunk

        send = None
        if transport.startswith("zmq"):
            import zmq

            sock = zmq.Context.instance().socket(zmq.PUSH)
            sock.connect(address)
            send = lambda i: sock.send(ENCODER.encode([Delta(1, f" t{i}", 3, i)]), zmq.NOBLOCK)  # noqa: E731
        elif transport == "tcp":
            sink = DeltaPublisher().sink(address, 1)
            send = lambda i: sink.send(Chunk(f" t{i}", 3, i))  # noqa: E731
        for i in range(5):  # connected and warm before the measured part
            if send:
                send(i)
            await asyncio.sleep(gap_s)
        await asyncio.sleep(0.5)
        go.send("go")
        go.recv()
        for i in range(messages):
            if send:
                send(i)
            await asyncio.sleep(gap_s)
        done.send("done")
        await asyncio.sleep(3600)

    uvloop.install()
    asyncio.run(main())


def one_run(transport: str, gap_s: float, messages: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    ready_r, ready_w = ctx.Pipe(False)
    receiver = ctx.Process(target=_receiver, args=("tcp" if transport == "timer" else transport, ready_w), daemon=True)
    receiver.start()
    address = ready_r.recv()
    go_here, go_there = ctx.Pipe()
    done_r, done_w = ctx.Pipe(False)
    sender = ctx.Process(target=_sender, args=(transport, address, gap_s, messages, go_there, done_w), daemon=True)
    sender.start()
    try:
        go_here.recv()
        before = cpu_seconds(psutil.Process(receiver.pid)), cpu_seconds(psutil.Process(sender.pid))
        go_here.send("go")
        done_r.recv()
        after = cpu_seconds(psutil.Process(receiver.pid)), cpu_seconds(psutil.Process(sender.pid))
    finally:
        sender.kill()
        receiver.kill()
    return {"receiver_us": 1e6 * (after[0] - before[0]) / messages, "sender_us": 1e6 * (after[1] - before[1]) / messages}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=None)
    args = p.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    steps = {0.02: 200 if args.quick else 400, 0.004: 500 if args.quick else 1500}
    load = psutil.getloadavg()
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    for r in range(rounds):
        for gap_s, messages in steps.items():
            for transport in TRANSPORTS[r % 4:] + TRANSPORTS[:r % 4]:  # rotated: background drift spreads evenly
                res = one_run(transport, gap_s, messages)
                runs.setdefault(f"{gap_s * 1000:g}ms", {}).setdefault(transport, []).append(res)
                progress(f"round {r + 1} gap {gap_s * 1000:g} ms {transport}: receiver {res['receiver_us']:.0f} us, "
                         f"sender {res['sender_us']:.0f} us per message")
    summary = {gap: {t: {k: statistics.median(x[k] for x in rs) for k in ("receiver_us", "sender_us")}
                     for t, rs in by_t.items()} for gap, by_t in runs.items()}
    for gap, by_t in summary.items():
        timer = by_t["timer"]["sender_us"]
        for t in ("tcp", "zmq", "zmq-direct-read"):
            by_t[t]["sender_less_timer_us"] = by_t[t]["sender_us"] - timer
        print(f"gap {gap}: tcp receiver {by_t['tcp']['receiver_us']:.0f} us vs zmq {by_t['zmq']['receiver_us']:.0f}; "
              f"sender (less its timer) tcp {by_t['tcp']['sender_less_timer_us']:.0f} vs zmq "
              f"{by_t['zmq']['sender_less_timer_us']:.0f} us per message; vLLM's socket read by pyzmq's asyncio "
              f"{by_t['zmq']['receiver_us']:.0f} vs EngineOutputReader {by_t['zmq-direct-read']['receiver_us']:.0f} us")
    out = {"machine": {"cpu": cpu_model(), "cores": psutil.cpu_count(), "load_average_start": load,
                       "load_average_end": psutil.getloadavg()},
           "rounds": rounds, "messages": {f"{g * 1000:g}ms": n for g, n in steps.items()},
           "median": summary, "runs": runs}
    path = RESULTS_DIR / ("channel_transport_quick.json" if args.quick else "channel_transport.json")
    path.write_text(json.dumps(out, indent=1))
    progress(f"wrote {path}")


if __name__ == "__main__":
    main()
