# paglets-artifacts: one image for the workers, the scheduler and the HTTP host (or a paglets host).
#   docker build -t paglets-artifacts .
#   docker run --rm paglets-artifacts --help
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY workers ./workers
RUN pip install ".[paglets]" \
    && useradd --system --uid 10001 --home-dir /data paglets \
    && mkdir -p /data/store /data/files \
    && chown -R paglets /data

# A named volume mounted on /data starts with this ownership.
VOLUME ["/data"]
USER paglets
ENV PAGLETS_ARTIFACTS_STORE_ROOT=/data/store \
    PAGLETS_ARTIFACTS_ALLOWED_ROOTS=/data/files

ENTRYPOINT ["paglets-artifacts"]
CMD ["--help"]
