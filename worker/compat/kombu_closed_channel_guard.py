"""A guard for a kombu Redis-transport crash that ends a Celery worker on a broker connection loss.

The crash (kombu 5.7.0, the newest release; the Redis transport builds a new connection pool
whenever a channel needs one after its pools were dropped):

1. Redis goes away while the worker has a BRPOP in flight on its task channel (a slot is free)
   and tasks running (delivered, not yet acknowledged). The event loop notices the loss on
   another socket first, typically the remote-control (pidbox) LISTEN connection.
2. Celery's consumer calls ``Connection.collect()``. Closing the task channel is cut short:
   ``Channel.close()`` first reads the pending BRPOP reply, which raises a connection error
   (ignored) before the channel is marked closed. ``Transport.close_connection()`` then closes
   the pidbox channel first, whose auto-delete queue cannot be deleted without Redis; that
   connection error ends the loop too, so the task channel is never closed. ``collect()`` then
   sets ``transport.client = None``.
3. Celery then calls ``Connection.close()``, which closes the task channel at last:
   ``Channel.close()`` drops its pools and calls ``QoS.restore_unacked_once()``, which needs a
   new pool, and ``Channel._connparams()`` reads ``self.connection.client.hostname`` from a
   transport whose client is None: ``AttributeError``. Neither kombu's ``maybe_close_channel``
   nor Celery's ``ignore_errors`` catch it (they catch connection and channel errors), so it
   leaves ``Consumer.start()`` and the worker exits ("Unrecoverable error").

With ``ack_emulation`` on, ``QoS.restore_unacked`` raises it and the worker dies. With it off,
``virtual.QoS.restore_unacked`` catches every error per message (the messages are written to an
"emergency dump" file and dropped), so the same AttributeError is logged, not fatal. An ack or
a requeue of such a message after the teardown can reach the same call.

`install` makes ``_connparams`` on a channel whose transport is closed raise
`ChannelTransportClosed`, a ``redis.ConnectionError``: that is what it is, and every caller on
these paths already handles connection errors (the close is abandoned, an ack or reject is
logged as failed). Nothing is lost: with ack emulation on, the message stays in kombu's
``unacked`` hash; either way the job store's lease and reconciler bring the job back. Calls on
a live channel are unchanged. Remove the guard once kombu checks for a closed transport itself.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

log = logging.getLogger("attentive_relay.worker")
_MARK = "_attentive_relay_closed_channel_guard"


class ChannelTransportClosed(redis.ConnectionError):
    """A kombu Redis channel was asked for a new connection after its transport was closed."""


def install() -> bool:
    """Wrap ``kombu.transport.redis.Channel._connparams`` once per process; later calls do nothing.

    Returns whether the guard is in place. A kombu without ``_connparams`` gets no guard (and a
    warning) rather than a worker that cannot start; ``test_kombu_still_needs_the_guard`` fails then.
    """
    original = getattr(kombu_redis.Channel, "_connparams", None)
    if original is None:
        log.warning("kombu's Redis Channel has no _connparams: the closed-channel guard is not installed")
        return False
    if getattr(original, _MARK, False):
        return True

    @functools.wraps(original)
    def _connparams(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        transport = self.connection
        if transport is None or getattr(transport, "client", None) is None:
            raise ChannelTransportClosed("the broker connection of this channel was closed")
        return original(self, *args, **kwargs)

    setattr(_connparams, _MARK, True)
    kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]
    return True
