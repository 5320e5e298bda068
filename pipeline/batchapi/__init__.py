"""The second way to send a batch: the OpenAI Batch API (`--via batch-api`), with the same guarantees.

    plan.py      queued rows -> parts (one endpoint, one model, <= part_size lines, <= part_bytes bytes),
                 each claimed under `part:<id>` (store/parts.py); the input file a part uploads
    client.py    /v1/files and /v1/batches over aiohttp, with the engine's auth headers and error policy
    driver.py    a part's life, one recorded step at a time: upload, create, poll, store
    ingest.py    output and error files -> the same attempts/results/status rows the engine writes
    runner.py    `pipeline run --via batch-api`: plan, advance, send the rows marked direct, until done
    options.py   what a batch-api batch keeps in its options: --on-expire, part limits, --audio-direct

The workers (fleet/worker.py) advance the parts of submitted batches with the same driver.
"""
