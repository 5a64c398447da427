def test_import_and_decide():
    from limiter import TokenBucket

    assert TokenBucket(rate=1.0, burst=1).acquire("k").allowed


def test_redis_server_fixture_is_real(redis_url: str):
    import redis

    client = redis.Redis.from_url(redis_url)
    assert client.incr("x") == 1
