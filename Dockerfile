# slackq image: one image, two processes (the Procfile's `web` and `worker` lines).
# Build: docker build -t slackq .   Run: see docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    LOG_FORMAT=json

WORKDIR /app

# Dependencies first (hash-pinned, the same lock as `python3 dev.py run`), so code edits do not
# reinstall them.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

COPY pyproject.toml README.md Procfile redis.conf ./
COPY slackq ./slackq
COPY producers ./producers
COPY worker ./worker
COPY dashboard ./dashboard
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --home-dir /app slackq

# Never run as root; the processes write nothing to disk (Redis holds all state).
USER slackq

# web listens on $PORT (3000); a worker serves Prometheus metrics on $METRICS_PORT (9100).
EXPOSE 3000 9100
CMD ["python", "-m", "producers"]
