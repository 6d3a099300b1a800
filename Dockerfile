# syntax=docker/dockerfile:1
# The Plansmith image: the project installed with uv from uv.lock, run as a non-root
# user, `plansmith` as the entrypoint (`docker run IMAGE worker`, `... api --host 0.0.0.0`).
#
# Targets:
#   app      (the default) the API and the workers
#   sandbox  app + bubblewrap from Debian, for `plansmith worker --queue sandbox`
#
#   docker build -t plansmith .
#   docker build --target sandbox -t plansmith-sandbox .

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- build: a virtualenv in /app/.venv with exactly the locked dependencies ----------------
FROM ${PYTHON_IMAGE} AS build

# The same uv series as the Makefile (uv>=0.13,<0.14), pinned.
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}"

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /app

# Dependencies first, in their own layer: rebuilt only when the lock changes.
# --locked fails the build if uv.lock does not match pyproject.toml.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-install-project

# Then the project itself (what .dockerignore lets through).
COPY . .
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev

# --- runtime: the base of both targets ---------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN groupadd --system --gid 10001 plansmith \
    && useradd --system --uid 10001 --gid plansmith --create-home \
       --home-dir /home/plansmith --shell /usr/sbin/nologin plansmith

WORKDIR /app
# Owned by root: the app user can read the code and the virtualenv, not change them.
COPY --from=build /app /app

USER plansmith
# The CLI turns SIGINT into a clean stop (the worker finishes its shutdown, uvicorn
# drains); as PID 1 without a handler, SIGTERM would be ignored until the kill.
STOPSIGNAL SIGINT
ENTRYPOINT ["plansmith"]
CMD ["--help"]

# --- sandbox: the sandbox worker (runs untrusted code under bubblewrap) ------------------
FROM runtime AS sandbox
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap libseccomp2 \
    && rm -rf /var/lib/apt/lists/*
USER plansmith
CMD ["worker", "--queue", "sandbox"]

# --- app: the API and the workers (last, so the default target) ---------------------------
FROM runtime AS app
