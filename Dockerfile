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
WORKDIR /var/lib/gatekeeper
ENV GATEKEEPER_CONFIG=/etc/gatekeeper/gatekeeper.yaml \
    GATEKEEPER_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9090/readyz', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
CMD ["gatekeeper", "serve"]
