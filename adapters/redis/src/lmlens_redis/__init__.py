"""lmlens-redis: the Redis side of lmlens adapters.

``RedisCache`` implements ``lmlens.cache.Cache`` (bytes with a TTL) and
``RedisRateLimiter`` counts requests per client. Both go through one ``RedisLink``,
which notices when Redis is unreachable, stops trying for a short while (so that a
dead Redis costs a request nothing), and tries again by itself: the service keeps
answering uncached while Redis is down and caches again once it is back.
"""

import importlib.metadata

from lmlens_redis.cache import RedisCache
from lmlens_redis.link import LinkHealth, RedisLink, RedisUnavailable
from lmlens_redis.ratelimit import RedisRateLimiter

__version__ = importlib.metadata.version("lmlens-redis")  # one source of truth: the package metadata

__all__ = [
    "LinkHealth",
    "RedisCache",
    "RedisLink",
    "RedisRateLimiter",
    "RedisUnavailable",
    "__version__",
]
