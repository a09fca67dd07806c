"""EngineOutputReader (engines/vllm_outputs.py) over real loopback ZeroMQ sockets, read the way vLLM 0.32's output
task reads its engine-core socket (`await output_socket.recv_multipart(copy=False)` in a loop)."""

from __future__ import annotations

import asyncio
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
