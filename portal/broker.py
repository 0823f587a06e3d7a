"""The Redis broker transport the workers use: kombu's, made to survive a Redis restart.

With kombu 5.7 and Celery 5.7, a worker whose connection drops while it runs a task (late
acknowledgement, so the message is still unacknowledged) exits with ``Unrecoverable error:
AttributeError: 'NoneType' object has no attribute 'hostname'``: the consumer first collects the
broken connection (which detaches the transport from its ``Connection``), then closes it, and
closing the channel tries to hand the unacknowledged message back to Redis through a new
connection pool built from the detached (``None``) connection. Acknowledging the finished task
later takes the same path. That AttributeError is not a connection error, so nothing catches it.

Here a channel whose connection is gone says so with a *connection* error, which kombu and
Celery already handle: the close goes on, the consumer reconnects, the late acknowledgement is
logged and dropped. The message itself is not lost by that: it is still in Redis's unacked set
(restored after ``visibility_timeout``) unless Redis itself lost it, and the build's state lives
in the database either way; the reaper re-queues a build whose messages are gone
(``builds.recovery.builds_reap_stale``).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise RedisConnectionError("the broker connection of this channel was closed")
        return super()._connparams(asynchronous=asynchronous)


class RedisTransport(kombu_redis.Transport):
    Channel = Channel
