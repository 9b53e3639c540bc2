# User-code image: serves the backup_pipeline code location over gRPC to a Dagster
# webserver and daemon (see README, "Running in production").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
# Exactly the versions CI tested (hash-checked; requirements-dev.lock has the same pins
# plus the test tools, which stay out of the image), then the project alone: nothing
# resolved here. The dependencies get their own layer, so a code change does not reinstall
# them.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY backup_pipeline ./backup_pipeline
RUN pip install --no-deps --no-build-isolation . && useradd --create-home --uid 10001 backup

USER 10001
# 4000: the code server; 9108: `backup-pipeline metrics` when run from this image
# (docs/operations.md).
EXPOSE 4000 9108
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s \
  CMD dagster api grpc-health-check -p 4000 || exit 1
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", \
     "-m", "backup_pipeline.definitions", "--location-name", "backup_pipeline"]
