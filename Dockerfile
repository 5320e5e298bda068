# The pipeline image: one image for `pipeline worker`, `pipeline submit` and `pipeline db upgrade`.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY pipeline ./pipeline
COPY migrations ./migrations
# A normal install: the wheel carries the Alembic revisions as pipeline.migrations. /exports is where
# docker-compose.yml mounts the folder `export -o /exports/...` writes to.
RUN pip install --no-cache-dir '.[postgres]' && useradd --create-home pipeline && rm -rf /app/pipeline /app/migrations \
    && mkdir /exports && chown pipeline /exports
USER pipeline
ENTRYPOINT ["pipeline"]
CMD ["--help"]
