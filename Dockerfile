# syntax=docker/dockerfile:1
# One image for every Portico process; the command picks it:
#   python -m gateway | python -m services.users | python -m services.orgs | python -m services.files
# Build: docker build -t portico:dev .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: compilers live only here --------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first so code edits don't rebuild the wheel cache layer.
COPY pyproject.toml README.md ./
COPY libs ./libs
COPY gateway ./gateway
COPY services ./services
RUN pip wheel --wheel-dir /wheels .

# --- runtime: no compilers, non-root, read-only friendly ----------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORTICO_ENV=production \
    PORTICO_HEALTH_PORT=8080
RUN groupadd --system --gid 10001 portico \
    && useradd --system --uid 10001 --gid portico --home-dir /app --shell /usr/sbin/nologin portico
COPY --from=builder /wheels /wheels
RUN pip install --no-index --find-links=/wheels portico && rm -rf /wheels
WORKDIR /app
# The source tree also goes in, first on PYTHONPATH: data files next to the code (gateway/routes.yaml,
# services/users/data/) are found whether or not the wheel packaged them. Owned by root and
# read-only to the process; nothing is written here at run time (k8s mounts the root filesystem
# read-only and gives /tmp an emptyDir).
COPY libs ./libs
COPY gateway ./gateway
COPY services ./services
ENV PYTHONPATH=/app
USER 10001:10001
EXPOSE 8080 8081 8082 8083
# curl is not in the slim image: probe /healthz with the stdlib. PORTICO_HEALTH_PORT is set per
# process (compose/k8s); the default matches the gateway.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os,sys,urllib.request; p=os.environ.get('PORTICO_HEALTH_PORT','8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=2).status == 200 else 1)"]
CMD ["python", "-m", "gateway"]
