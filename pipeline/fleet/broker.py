"""The Celery app, built from Settings in a factory (never at import time), and publishing chunks.

Transport: `settings.broker_url` (Redis for a fleet), or with none configured Celery's filesystem transport
in the data directory, so several `pipeline worker` processes on one machine need no server.
One message is capacity: `[batch, n, queue]` lets the worker that takes it claim up to n queued rows of the
batches running on that queue, by fair share (store/fair.py); the batch is only a hint. The database, not
the message, says what is left to do. (A message of an older version, `[batch, [ids]]`, counts as capacity
for as many rows.)
"""

from __future__ import annotations

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
#: Seconds between two looks for messages in the filesystem transport's folder (a directory listing).
FILESYSTEM_POLL_SECONDS = 0.2


def broker_url(settings: Settings) -> str:
    return settings.broker_url or "filesystem://"


def make_celery(settings: Settings) -> Celery:
    """A Celery app for these settings. `pipeline.fleet.worker` registers the tasks when a worker starts."""
    url = broker_url(settings)
    app = Celery("pipeline", broker=url, set_as_current=False)
    if url.startswith("redis://"):  # kombu's transport without the restore that kills a worker (transport.py)
        app.conf.broker_transport = "pipeline.fleet.transport:Transport"
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


def publish_capacity(app: Celery, batch_id: str, rows: int, chunk_size: int, queue: str) -> int:
    """Publish capacity for `rows` queued rows, in messages of up to `chunk_size`; returns how many."""
    sent = 0
    with app.producer_or_acquire() as producer:
        while rows > 0:
            n = min(rows, chunk_size)
            app.send_task(TASK_NAME, args=[batch_id, n, queue], queue=queue, producer=producer)
            rows, sent = rows - n, sent + 1
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
            # kombu looks for new messages once a second by default: a worker thread that finished its
            # chunk would idle that long, and the batches it was feeding would run short of rows.
            "polling_interval": FILESYSTEM_POLL_SECONDS,
        }
    return {"visibility_timeout": VISIBILITY_TIMEOUT}
