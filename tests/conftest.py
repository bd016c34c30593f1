"""Shared pytest fixtures."""

from pytest_redis import factories

# A throwaway redis-server (/usr/bin/redis-server) on a free port, started once per session, and a
# client on db 0 that flushes everything after each test that uses it.
redis_proc = factories.redis_proc(port=None)
redisdb = factories.redisdb("redis_proc")
