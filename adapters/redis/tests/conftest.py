from lmlens_redis.testing import redis_server  # noqa: F401
