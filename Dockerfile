# The pipeline image: one image for `pipeline worker`, `pipeline submit` and `pipeline db upgrade`.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY pipeline ./pipeline
COPY migrations ./migrations
# Editable, so the Alembic revisions under /app/migrations ship beside the package.
RUN pip install --no-cache-dir -e . && useradd --create-home pipeline
USER pipeline
ENTRYPOINT ["pipeline"]
CMD ["--help"]
