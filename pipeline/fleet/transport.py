"""The Redis broker transport: kombu's, except that a channel whose connection broke neither restores nor
acknowledges its unacknowledged messages.

With Celery 5.7 and kombu 5.7, a worker that loses its Redis connection (Redis restarted, a network blip)
while tasks are unacknowledged (late acks: always, here) dies: the consumer collects the broken connection,
which detaches the transport, then closes it, and the channel's restore of its unacknowledged messages
builds a connection pool from the detached transport (`'NoneType' object has no attribute 'hostname'`),
an error Celery calls unrecoverable; and a task that finishes after the reconnection acknowledges its
message on the closed channel (`'NoneType' object has no attribute 'client'`), unrecoverable too. Here
neither is attempted: the message stays unacknowledged in Redis, if Redis kept it. Nothing needs either:
a message is capacity, not rows, and the workers re-publish capacity for queued rows whose messages were
lost (store/recovery.py); Redis restores unacknowledged messages after the visibility timeout as well.
kombu's own pgmq and Azure Service Bus transports turn the restore off the same way.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis


class QoS(redis.QoS):
    restore_at_shutdown = False

    def ack(self, delivery_tag: Any) -> None:
        if self.channel.connection is None:  # its broken connection was closed: nothing to ack it on
            return
        super().ack(delivery_tag)  # type: ignore[no-untyped-call]

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if self.channel.connection is None:
            return
        super().reject(delivery_tag, requeue)  # type: ignore[no-untyped-call]


class Channel(redis.Channel):
    QoS = QoS


class Transport(redis.Transport):
    Channel = Channel
