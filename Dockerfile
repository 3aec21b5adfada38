# One image for every p2psync process: registry, file server, open group, service node,
# relay, ledger steps and devices. See docs/deploy.md and compose.yaml.
FROM python:3.11-slim

WORKDIR /src
COPY pyproject.toml README.md ./
COPY overlay ./overlay
COPY p2psync ./p2psync
RUN pip install --no-cache-dir . && rm -rf /src

# Every service keeps its key, its SQLite files and its ledger registration under --data.
VOLUME /data
WORKDIR /data
ENTRYPOINT ["p2psync"]
CMD ["--help"]
