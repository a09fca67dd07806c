"""The delta channel's transport (plain TCP, length-framed msgpack) over real loopback sockets: framing across any
split of the byte stream, order, messages held while connecting, reconnecting to a restarted router, dropping (not
raising, not retrying per message) for a router that is gone, and a router that survives garbage on its port."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from gemma_serving.deltas.publisher import RECONNECT_AFTER_S, DeltaPublisher
from gemma_serving.deltas.subscriber import DeltaSubscriber
from gemma_serving.deltas.wire import MAX_MESSAGE_BYTES, Delta, FrameReader, decoder, framed, parse_channel_address
from gemma_serving.engines.types import Chunk, FinishReason


def _deltas(n: int, stream: int = 7) -> list[Delta]:
    return [Delta(stream, f" t{i}", 3, i + 1) for i in range(n)]


def test_frames_are_split_back_into_messages_whatever_the_stream_split():
    messages = [framed(_deltas(k)) for k in (1, 3, 40)]
    data = b"".join(messages)
    decode = decoder().decode
    for step in (1, 2, 5, 17, len(data)):
        reader, got = FrameReader(), []
        for i in range(0, len(data), step):
            got += [decode(m) for m in reader.feed(data[i:i + step])]
        assert got == [_deltas(k) for k in (1, 3, 40)], step


def test_a_length_above_the_limit_stops_the_reader_after_the_messages_before_it():
    reader = FrameReader()
    assert len(reader.feed(framed(_deltas(2)) + (MAX_MESSAGE_BYTES + 1).to_bytes(4, "big") + framed([]))) == 1
    assert reader.refused == MAX_MESSAGE_BYTES + 1
    assert reader.feed(framed(_deltas(1))) == []


def test_channel_addresses_round_trip_and_bad_ones_are_refused():
    from gemma_serving.deltas.wire import channel_address

    assert parse_channel_address(channel_address("10.0.0.5", 4711)) == ("10.0.0.5", 4711)
    assert parse_channel_address(channel_address("fd00::5", 4711)) == ("fd00::5", 4711)
    with pytest.raises(ValueError):
        parse_channel_address("ipc:///tmp/x")


async def _collect(inbox, n: int, timeout: float = 5.0) -> list[Delta]:
    got: list[Delta] = []
    async with asyncio.timeout(timeout):
        while len(got) < n:
            got += await inbox.take()
    return got


async def test_deltas_sent_before_the_connection_is_up_arrive_in_order(subscriber):
    publisher = DeltaPublisher()
    inbox = subscriber.open()
    sink = publisher.sink(subscriber.address, inbox.stream)
    for i in range(200):  # the first flush starts the connection; later passes are held until it is up
        sink.send(Chunk(f" t{i}", 3, i + 1))
        if i % 10 == 0:
            await asyncio.sleep(0)
    sink.send(Chunk(" end", 3, 201, FinishReason.LENGTH))
    got = await _collect(inbox, 201)
    assert "".join(d.text for d in got) == "".join(f" t{i}" for i in range(200)) + " end"
    assert got[-1].end and got[0].replica_s is not None and all(d.replica_s is None for d in got[1:])
    assert subscriber.messages_received < 201  # deltas of one pass share a message
    publisher.close()


async def test_a_replica_reconnects_to_a_router_that_came_back_on_its_port(subscriber):
    publisher = DeltaPublisher()
    inbox = subscriber.open()
    publisher.sink(subscriber.address, inbox.stream).send(Chunk(" a", 1, 1))
    assert [d.text for d in await _collect(inbox, 1)] == [" a"]
    address, port = subscriber.address, parse_channel_address(subscriber.address)[1]
    await subscriber.stop()  # the router goes (its connections close)
    await asyncio.sleep(0.1)
    again = DeltaSubscriber("127.0.0.1", "127.0.0.1", port)
    await again.start()
    try:
        assert again.address == address
        inbox = again.open()
        publisher.sink(address, inbox.stream).send(Chunk(" b", 1, 1))
        assert [d.text for d in await _collect(inbox, 1)] == [" b"]
    finally:
        await again.stop()
        publisher.close()


async def test_deltas_for_a_router_that_is_gone_are_dropped_with_one_warning_and_no_retry_storm(caplog):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    publisher = DeltaPublisher()
    sink = publisher.sink(f"tcp://127.0.0.1:{port}", 1)
    attempts = 0
    loop = asyncio.get_running_loop()
    connect = loop.create_connection

    async def counting(*a, **kw):
        nonlocal attempts
        attempts += 1
        return await connect(*a, **kw)

    loop.create_connection = counting
    try:
        with caplog.at_level(logging.WARNING, logger="gemma_serving.deltas.publisher"):
            for i in range(50):
                sink.send(Chunk(f" t{i}", 1, i + 1))
                await asyncio.sleep(0.005)
    finally:
        del loop.create_connection
    assert attempts == 1  # one attempt, then RECONNECT_AFTER_S without any (50 passes in ~0.3 s)
    assert 0.25 < RECONNECT_AFTER_S
    warnings = [r for r in caplog.records if "dropping delta messages" in r.getMessage()]
    assert len(warnings) == 1
    publisher.close()


async def test_a_router_closes_a_connection_that_sends_garbage_and_keeps_serving_replicas(subscriber, caplog):
    host, port = parse_channel_address(subscriber.address)
    publisher = DeltaPublisher()
    inbox = subscriber.open()
    with caplog.at_level(logging.WARNING, logger="gemma_serving.deltas.subscriber"):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(framed([]) + (5).to_bytes(4, "big") + b"\xc1\xc1\xc1\xc1\xc1")  # a bad msgpack body: dropped
        writer.write(b"\xff\xff\xff\xff")  # a length no replica sends: the connection is closed
        await writer.drain()
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # closed by the router
        writer.close()
    assert any("malformed delta message" in r.getMessage() for r in caplog.records)
    assert any("closed a delta channel connection" in r.getMessage() for r in caplog.records)
    publisher.sink(subscriber.address, inbox.stream).send(Chunk(" ok", 1, 1))
    assert [d.text for d in await _collect(inbox, 1)] == [" ok"]
    publisher.close()
