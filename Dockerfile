# Slim image running `gatekeeper serve` as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/gatekeeper --create-home gatekeeper
COPY --from=build /install /usr/local
COPY config/gatekeeper.yaml /etc/gatekeeper/gatekeeper.yaml
USER gatekeeper
# The journal (ledger.journal_path) and the embedded Redis's files default to
# ./.gatekeeper under this directory; mount a volume here to keep them across containers.
WORKDIR /var/lib/gatekeeper
ENV GATEKEEPER_CONFIG=/etc/gatekeeper/gatekeeper.yaml \
    GATEKEEPER_LOG_FORMAT=json \
    GATEKEEPER_HEALTH_URL=http://127.0.0.1:9090/healthz \
    PYTHONUNBUFFERED=1
EXPOSE 8080 9090
# Liveness only: /healthz answers while the process serves. /readyz also needs Redis, so a
# Redis outage would mark every replica unhealthy; use /readyz for load-balancer readiness.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen(os.environ['GATEKEEPER_HEALTH_URL'], timeout=2).status != 200)"]
# SIGTERM drains: /readyz turns 503, the listeners close and requests in flight get
# server.shutdown_grace_s (30 s by default) to finish. Give `docker stop` a longer timeout.
STOPSIGNAL SIGTERM
CMD ["gatekeeper", "serve"]
