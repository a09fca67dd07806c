"""EngineOutputReader (engines/vllm_outputs.py) over real loopback ZeroMQ sockets, read the way vLLM 0.32's output
task reads its engine-core socket (`await output_socket.recv_multipart(copy=False)` in a loop)."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace

import zmq
import zmq.asyncio
from gemma_serving.engines.vllm_outputs import EngineOutputReader, read_engine_outputs_directly


def _pair() -> tuple[zmq.asyncio.Socket, zmq.Socket]:
    pull = zmq.asyncio.Context.instance().socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    return pull, push


def _llm(socket) -> SimpleNamespace:
    return SimpleNamespace(engine_core=SimpleNamespace(resources=SimpleNamespace(output_socket=socket)))


async def _read_into(socket, got: list) -> None:
    while True:  # vLLM's process_outputs_socket
        frames = await socket.recv_multipart(copy=False)
        got.append(tuple(bytes(f) for f in frames))


async def test_vllms_reads_go_through_the_reader_and_every_message_arrives_whole_in_order():
    pull, push = _pair()
    reader = read_engine_outputs_directly(_llm(pull))
    assert isinstance(reader, EngineOutputReader)
    got: list = []
    task = asyncio.create_task(_read_into(pull, got))
    try:
        for i in range(300):  # bursts (queued while the task is busy) and gaps (the task waits on the descriptor)
            push.send_multipart([b"outputs %d" % i, b"aux"])
            if i % 25 == 0:
                await asyncio.sleep(0.01)
        async with asyncio.timeout(5):
            while len(got) < 300:
                await asyncio.sleep(0.01)
        assert got == [(b"outputs %d" % i, b"aux") for i in range(300)]
        assert reader.messages == 300
    finally:
        task.cancel()
        pull.close()
        push.close()


async def test_the_descriptor_is_quiet_while_the_task_is_not_reading():
    """Between reads, a readable descriptor must not call back on every loop pass (a busy loop)."""
    pull, push = _pair()
    reader = read_engine_outputs_directly(_llm(pull))
    calls = 0
    readable = reader._readable

    def counting() -> None:
        nonlocal calls
        calls += 1
        readable()

    got: list = []
    task = asyncio.create_task(_read_into(pull, got))
    await asyncio.sleep(0.05)  # waiting on the descriptor
    loop = asyncio.get_running_loop()
    loop.remove_reader(reader._socket.FD)
    loop.add_reader(reader._socket.FD, counting)
    task.cancel()  # nobody reads now; messages keep coming
    await asyncio.gather(task, return_exceptions=True)
    for i in range(5):
        push.send(b"m%d" % i)
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    assert calls < 30, calls  # a few per message at most, not one per loop pass
    pull.close()
    push.close()


async def test_closing_the_socket_while_waiting_removes_the_descriptors_callback():
    pull, push = _pair()
    reader = read_engine_outputs_directly(_llm(pull))
    task = asyncio.create_task(_read_into(pull, []))
    await asyncio.sleep(0.05)  # waiting on the descriptor
    fd = reader._socket.FD
    task.cancel()  # what vLLM's shutdown does: cancel the task, close the sockets
    pull.close()
    assert isinstance((await asyncio.gather(task, return_exceptions=True))[0], asyncio.CancelledError)
    # pyzmq's close removed the reader callback (ours): none is left on a closed, reusable descriptor number
    assert asyncio.get_running_loop().remove_reader(fd) is False
    push.close()


def test_a_layout_other_than_vllm_032s_keeps_pyzmqs_read():
    assert read_engine_outputs_directly(SimpleNamespace()) is None
    assert read_engine_outputs_directly(_llm(zmq.Context.instance().socket(zmq.PULL))) is None  # not asyncio


async def _read_timed(socket, got: list) -> None:
    loop = asyncio.get_running_loop()
    while True:
        frames = await socket.recv_multipart(copy=False)
        got.append((bytes(frames[0]), loop.time()))


@contextlib.asynccontextmanager
async def _timed_reads(window_s: float):
    """A paced reader on a loopback pair, read the way vLLM does; yields (reader, push socket, [(message, time)])."""
    pull, push = _pair()
    reader = read_engine_outputs_directly(_llm(pull))
    reader.pace(window_s)
    got: list = []
    task = asyncio.create_task(_read_timed(pull, got))
    try:
        yield reader, push, got
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        pull.close()
        push.close()


async def _send_every(push, n: int, gap_s: float, start: int = 0) -> None:
    for i in range(start, start + n):
        push.send(b"m%d" % i)
        await asyncio.sleep(gap_s)


async def test_paced_reads_drain_the_socket_once_per_tick_while_no_request_needs_its_output_at_once():
    """A step every 5 ms, read in batches at the 50 ms ticks of the loop clock, all of them, in order."""
    async with _timed_reads(0.05) as (reader, push, got):
        demand = reader.demand(max_tokens=1000)
        demand.pulled(1, 1)  # its first output is in: nothing needs a step's output before the tick
        assert reader.paced
        await _send_every(push, 60, 0.005)
        await asyncio.sleep(0.12)
        assert [m for m, _ in got] == [b"m%d" % i for i in range(60)]
        reads = sorted({round(t, 3) for _, t in got})
        assert len(reads) <= 12, reads  # ~7 ticks over 0.3 s + 0.12 s, not 60 separate reads
        off_tick = [t for _, t in got if min(t % 0.05, 0.05 - t % 0.05) > 0.004]
        assert len(off_tick) <= 2, off_tick  # the message in flight when pacing began, at most
        assert reader.paced_waits >= 5
        demand.close()


async def test_a_new_request_or_one_about_to_end_is_read_at_once():
    loop = asyncio.get_running_loop()
    async with _timed_reads(0.2) as (reader, push, got):
        running = reader.demand(max_tokens=10)
        running.pulled(1, 1)
        await _send_every(push, 1, 0.01)
        await asyncio.sleep(0.01)  # m0 was read (eager until then), and the reader now waits for its tick
        newcomer = reader.demand(max_tokens=10)  # waiting for its first token: the reader watches the socket now
        assert not reader.paced
        sent = loop.time()
        await _send_every(push, 1, 0.0, start=1)
        await asyncio.sleep(0.03)
        assert len(got) == 2 and got[1][1] - sent < 0.02, got
        newcomer.pulled(1, 1)
        running.pulled(3, 4)  # 6 left: more than its last pull (3) + 1
        assert reader.paced
        running.pulled(5, 9)  # 1 left: its next pull may be its end
        assert not reader.paced
        sent = loop.time()
        await _send_every(push, 1, 0.0, start=2)
        await asyncio.sleep(0.03)
        assert len(got) == 3 and got[2][1] - sent < 0.02, got
    running.close()
    newcomer.close()
    running.close()  # twice: counted once
    assert (reader.streams, reader.eager) == (0, 0) and not reader.paced


async def test_with_no_request_in_flight_or_no_window_every_message_is_read_as_it_comes():
    """Utility replies (adapter loads, health) and idle engines are never held for a tick."""
    loop = asyncio.get_running_loop()
    async with _timed_reads(0.0) as (reader, push, got):
        for window, requests in ((0.2, 0), (0.0, 1)):
            reader.pace(window)
            demands = [reader.demand(max_tokens=100) for _ in range(requests)]
            for d in demands:
                d.pulled(1, 1)
            assert not reader.paced
            before = len(got)
            sent = loop.time()
            await _send_every(push, 3, 0.01, start=before)
            await asyncio.sleep(0.03)
            assert len(got) == before + 3 and got[-1][1] - sent < 0.06, got
            for d in demands:
                d.close()
        assert reader.paced_waits == 0
