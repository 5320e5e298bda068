"""`celery -A pipeline.celery_app worker|inspect|flower ...`: the Celery app, built from the environment.

Celery's own command line (and Flower's) needs an app as a module attribute, so this is the one module that
builds one when imported: it reads the settings from PIPELINE_* / OPENAI_* variables and connects to
nothing. The engine starts only when a worker starts (`worker_init`), never for `inspect` or `flower`.
`pipeline worker` does the same with flags on top; both need Celery's thread pool (the default here): the
engine's one event loop serves every task thread of the process.
"""

from __future__ import annotations

from typing import Any

from celery import signals

from pipeline.fleet.broker import DEFAULT_QUEUE, make_celery
from pipeline.fleet.worker import register
from pipeline.settings import Settings

settings = Settings.load()
app = make_celery(settings)
_slot = register(app)


@signals.worker_init.connect(weak=False)  # type: ignore[untyped-decorator]
def _start_engine(sender: Any = None, **_: Any) -> None:
    pool = str(getattr(sender, "pool_cls", ""))
    if pool and "thread" not in pool.lower() and "solo" not in pool.lower():
        raise RuntimeError(f"pipeline workers need --pool=threads (or solo), not {pool}")
    queues = sorted(app.amqp.queues.consume_from or []) or [DEFAULT_QUEUE]
    settings.require_api_key()
    _slot.start(app, settings, queues)
