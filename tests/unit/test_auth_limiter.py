"""The failed-authentication limiter: a valid key is never refused for someone else's failures behind the same
address, and memory stays bounded with any number of distinct failing peers."""

import asyncio
import tracemalloc

import grpc
import pytest
from gemma_serving.errors import RateLimited, Unauthenticated
from gemma_serving.router.auth import Authenticator, Credentials
from gemma_serving.security_config import SecuritySettings

from tests.unit.test_tenancy import HASH_A, HASH_B, KEY_A, KEY_B, _code, _stub, auth, req, security


async def test_one_bad_caller_behind_a_shared_address_locks_out_only_itself(make_router):
    # Every loopback channel comes from 127.0.0.1, like every client behind a load balancer.
    router, _ = await make_router({"security": {**security()["security"], "failed_auth_per_minute": 5}})
    (bad_channel, bad), (a_channel, tenant_a), (b_channel, tenant_b) = [await _stub(router) for _ in range(3)]
    bad_codes, good_codes = [], []
    for i in range(8):
        bad_codes.append((await _code(bad.Generate(req(), metadata=auth(f"gsk_0000000{i}_guess"))))[0])
        good = await asyncio.gather(_code(tenant_a.Generate(req(), metadata=auth(KEY_A))),
                                    _code(tenant_b.Generate(req(), metadata=auth(KEY_B))))
        good_codes += [code for code, _ in good]
    assert bad_codes[:5] == [grpc.StatusCode.UNAUTHENTICATED] * 5
    assert set(bad_codes[5:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert good_codes == [grpc.StatusCode.OK] * 16
    code, details = await _code(bad.Generate(req(), metadata=auth("gsk_00000009_guess")))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "failed_auth_per_minute is 5" in details
    for channel in (bad_channel, a_channel, b_channel):
        await channel.close()


def test_the_limit_frees_up_after_its_window():
    now = [0.0]
    authn = Authenticator(SecuritySettings.model_validate(
        {**security()["security"], "failed_auth_per_minute": 2}), clock=lambda: now[0])
    bad = Credentials("Bearer gsk_00000000_guess", peer="10.0.0.1")
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            authn.authenticate(bad)
    with pytest.raises(RateLimited) as info:
        authn.authenticate(bad)
    assert info.value.retry_after_s == 60
    assert authn.authenticate(Credentials(f"Bearer {KEY_A}", peer="10.0.0.1")).id == "team-a"
    now[0] = 61.0
    with pytest.raises(Unauthenticated):
        authn.authenticate(bad)


def test_memory_stays_bounded_with_100000_distinct_failing_peers():
    settings = SecuritySettings.model_validate({"auth": "api_key", "failed_auth_tracked_clients": 10_000, "tenants": [
        {"id": "team-a", "api_key_hashes": [HASH_A]}, {"id": "team-b", "api_key_hashes": [HASH_B]}]})
    authn = Authenticator(settings, clock=lambda: 0.0)

    def fail_from(peers):
        for i in peers:
            with pytest.raises(Unauthenticated):
                authn.authenticate(Credentials("Bearer gsk_00000000_guess", peer=f"10.{i >> 16}.{i >> 8 & 255}.{i & 255}"))

    tracemalloc.start()
    try:
        fail_from(range(20_000))
        after_20k = tracemalloc.get_traced_memory()[0]
        fail_from(range(20_000, 100_000))
        after_100k = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(authn._failures) == 10_000
    assert after_100k - after_20k < 256 * 1024, (after_20k, after_100k)  # flat once full
    assert authn.authenticate(Credentials(f"Bearer {KEY_B}", peer="10.0.0.1")).id == "team-b"
