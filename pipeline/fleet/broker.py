"""The Celery app, built from Settings in a factory (never at import time), and publishing chunks.

Transport: `settings.broker_url` (Redis for a fleet), or with none configured Celery's filesystem transport
in the data directory, so several `pipeline worker` processes on one machine need no server.
One message carries a chunk of request ids; the database, not the message, says what is left to do.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from amqp.exceptions import ChannelError
from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError

from pipeline.errors import ConnectError
from pipeline.settings import Settings, mask_url

#: The task every chunk message names.
TASK_NAME = "pipeline.run_chunk"
#: The default queue.
DEFAULT_QUEUE = "pipeline"
#: Seconds an unacknowledged Redis message waits before redelivery. Far above any chunk's run time: crash
#: recovery does not wait for it (expired leases are re-queued by the workers), it is only the last resort.
VISIBILITY_TIMEOUT = 6 * 3600


def broker_url(settings: Settings) -> str:
    return settings.broker_url or "filesystem://"


def make_celery(settings: Settings) -> Celery:
    """A Celery app for these settings. `pipeline.fleet.worker` registers the tasks when a worker starts."""
    url = broker_url(settings)
    app = Celery("pipeline", broker=url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # One engine (one event loop, one HTTP pool) per process serves every task thread: the thread pool
        # is the only one that works, so it is the default for `celery -A pipeline.celery_app worker` too.
        worker_pool="threads",
        worker_concurrency=4,
        task_default_queue=DEFAULT_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options=_transport_options(settings, url),
        worker_send_task_events=True,
        task_send_sent_event=False,
    )
    return app


def check_broker(app: Celery) -> None:
    """Raise ConnectError naming the broker (password masked) when it cannot be reached."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
    except (KombuOperationalError, OSError) as exc:
        raise ConnectError(f"cannot reach broker {mask_url(str(app.conf.broker_url))}: {exc}") from None


def publish_chunks(
    app: Celery, batch_id: str, ids: Iterable[int], chunk_size: int, queue: str | None = None
) -> int:
    """Send one message per chunk of ids; returns the number of messages."""
    sent = 0
    chunk: list[int] = []
    with app.producer_or_acquire() as producer:
        for request_id in ids:
            chunk.append(request_id)
            if len(chunk) >= chunk_size:
                _send(app, producer, batch_id, chunk, queue)
                sent, chunk = sent + 1, []
        if chunk:
            _send(app, producer, batch_id, chunk, queue)
            sent += 1
    return sent


def queue_size(app: Celery, queue: str = DEFAULT_QUEUE) -> int:
    """Messages waiting in `queue` (not counting those a worker has taken)."""
    with app.connection_for_read() as conn:
        try:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
        except (
            ChannelError
        ):  # Redis: an empty queue is a missing key, which a passive declare calls NOT_FOUND
            return 0


def _send(app: Celery, producer: Any, batch_id: str, chunk: Sequence[int], queue: str | None) -> None:
    app.send_task(TASK_NAME, args=[batch_id, list(chunk)], queue=queue or DEFAULT_QUEUE, producer=producer)


def _transport_options(settings: Settings, url: str) -> dict[str, Any]:
    if url.startswith("filesystem"):
        folder = Path(settings.data_dir).resolve() / "broker"
        (folder / "queue").mkdir(parents=True, exist_ok=True)
        (folder / "processed").mkdir(parents=True, exist_ok=True)
        (folder / "control").mkdir(parents=True, exist_ok=True)
        return {
            "control_folder": str(
                folder / "control"
            ),  # kombu's default is ./control in the working directory
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
        }
    return {"visibility_timeout": VISIBILITY_TIMEOUT}
