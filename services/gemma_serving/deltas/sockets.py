"""How a replica listens for direct calls (deltas/calls.py): a ZeroMQ PULL socket on a node address (port 0: any free
one), reachable at the address it advertises. (The delta channel back to routers is plain TCP: deltas/subscriber.py.)"""

from __future__ import annotations

import zmq
import zmq.asyncio


def listen(bind_host: str, advertise_host: str, port: int = 0) -> tuple[zmq.asyncio.Socket, str]:
    """A bound asyncio PULL socket (pyzmq's shared context: see DeltaPublisher) and the address peers connect to."""
    sock = zmq.asyncio.Context.instance().socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    host = "*" if bind_host in ("0.0.0.0", "::") else bind_host
    if port:
        sock.bind(f"tcp://{host}:{port}")
    else:
        port = sock.bind_to_random_port(f"tcp://{host}")
    return sock, f"tcp://{advertise_host}:{port}"
