"""Single-key GETs on connections held out of the pool: the read path's one Redis call.

redis-py wraps every command in a pool lock, deprecation checks, a retry object and
observability hooks; for a GET on a healthy connection that is most of its cost. Here a
GET goes straight to an idle connection this object holds. Any connection failure closes
that connection and the GET is sent once more through the client, which brings its
reconnects and retries. Held connections stay the pool's: closing the client closes them.
"""

from __future__ import annotations

from typing import Final, cast

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: Idle connections held for reuse; more in flight at once go back to the pool after.
MAX_IDLE: Final = 64


class DirectGets:
    """GETs on connections taken from ``client``'s pool once and reused."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._idle: list[AbstractConnection] = []

    async def get(self, key: str) -> bytes | None:
        pool = self._client.connection_pool
        connection = self._idle.pop() if self._idle else await self._checkout()
        try:
            await connection.send_command("GET", key)
            reply = await connection.read_response()
        except (RedisConnectionError, RedisTimeoutError, OSError):
            await connection.disconnect(nowait=True)
            await pool.release(connection)
            return cast("bytes | None", await self._client.get(key))
        except BaseException:  # cancelled mid-reply: the connection's state is unknown
            await connection.disconnect(nowait=True)
            await pool.release(connection)
            raise
        if len(self._idle) < MAX_IDLE:
            self._idle.append(connection)
        else:
            await pool.release(connection)
        return cast("bytes | None", reply)

    async def _checkout(self) -> AbstractConnection:
        pool = self._client.connection_pool
        return cast("AbstractConnection", await pool.get_connection())  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        """Give the held connections back to the pool."""
        idle, self._idle = self._idle, []
        for connection in idle:
            await self._client.connection_pool.release(connection)
