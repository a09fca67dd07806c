"""The token path between replicas and routers: one multiplexed channel per router–replica pair.

The Serve handle call of a request stays open for its whole life (Serve counts it for autoscaling and backpressure,
cancelling it aborts the engine request, a dead replica fails it), but its deltas do not travel as one Ray streaming
item each: a replica batches the deltas of every in-flight request bound for the same router that are ready in one
event-loop pass (one engine step) into one message on one TCP connection per router–replica pair, the pattern vLLM
uses between its engine core and front end (it uses ZeroMQ; plain TCP on the event loop costs a fraction of its CPU
per message here). Requests reach replicas as signed direct calls over TCP too (calls.py). See README, Design: the
token path.
"""
