# A Squall node. Not exercised by CI (no Docker engine there); kept in step
# with the Makefile: install the package, migrate, serve.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SQUALL_HOST=0.0.0.0 \
    SQUALL_PORT=8000 \
    SQUALL_DATA_DIR=/var/lib/squall

RUN useradd --system --home-dir /var/lib/squall --create-home squall

WORKDIR /app
COPY pyproject.toml README.md ./
COPY protocol ./protocol
COPY realtime ./realtime
COPY rest ./rest
COPY migrations ./migrations
RUN pip install --no-cache-dir .

USER squall
EXPOSE 8000
VOLUME ["/var/lib/squall"]

HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"

# Migrating at start is safe with several replicas: migrators take turns
# on a PostgreSQL advisory lock, and an up-to-date schema is a no-op.
CMD ["sh", "-c", "squall migrate && exec squall serve"]
