# syntax=docker/dockerfile:1
#
# The image every recstack service is built FROM (build context: the repository root).
#
# Why a shared base plus four short Dockerfiles: the services are one Python package with one
# pinned dependency set, so their images differ only in name, port and entry point. This file
# holds all they share (dependencies, generated protobuf code, non-root user, stop signal);
# `services/<svc>/Dockerfile` adds the service's identity: name, gRPC port, health check and
# command. One Dockerfile parametrised by `ARG SERVICE` would leave the service folders without
# their own Dockerfile (the repository layout asks for one) and bury each port in build args.
# The four images share every layer of this one, so a registry stores it once. infra/README.md
# shows how compose (`additional_contexts: service:base`) and plain `docker build` combine them.

# One tag for both stages: the venv built in `build` runs on the interpreter of `runtime`.
# Pin a digest for releases: --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:...
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv

WORKDIR /src

# Dependencies first, so code changes reuse this layer. Only the runtime set goes into the
# venv the image ships: requirements/runtime.txt, the packages shared/ and services/ import
# (`make lint` checks that it holds no test tool, linter or embedded server).
COPY requirements/runtime.txt requirements/dev.txt ./requirements/
RUN pip install --require-virtualenv -r requirements/runtime.txt

# grpcio-tools generates code at build time only: it gets a venv of its own, at dev.txt's pin,
# that the runtime stage never copies.
RUN grep -E '^grpcio-tools==' requirements/dev.txt > /tmp/protoc.txt \
    && python -m venv /opt/protoc \
    && /opt/protoc/bin/pip install -r /tmp/protoc.txt -c requirements/dev.txt

COPY pyproject.toml ./
COPY protos ./protos
COPY shared ./shared
COPY services ./services

# Generated code is never in the build context (.dockerignore): generate it here, as
# `make proto` does, then install the package non-editable so the runtime stage needs only
# /opt/venv. pip compiles the bytecode now, which a read-only root filesystem could not store.
RUN rm -rf shared/gen \
    && mkdir -p shared/gen/recstack \
    && find protos -name '*.proto' -exec /opt/protoc/bin/python -m grpc_tools.protoc -Iprotos \
        --python_out=shared/gen --grpc_python_out=shared/gen --pyi_out=shared/gen {} + \
    && pip install --require-virtualenv --no-deps . \
    && python -c 'import recstack.registry.v1.registry_service_pb2, shared.healthcheck'


FROM ${PYTHON_IMAGE} AS runtime

# A numeric, otherwise unused UID/GID: Kubernetes' runAsNonRoot can only verify a numeric USER.
ARG UID=10001
ARG GID=10001
RUN groupadd --system --gid "${GID}" recstack \
    && useradd --system --uid "${UID}" --gid recstack --home-dir /var/lib/recstack \
        --shell /usr/sbin/nologin recstack \
    && mkdir -p /var/lib/recstack/offline \
    && chown -R "${UID}:${GID}" /var/lib/recstack

COPY --from=build /opt/venv /opt/venv

# PYTHONSAFEPATH keeps the working directory off sys.path: the code runs from site-packages only.
# RECSTACK_RUN_DIR points at /tmp, the one place a read-only root filesystem leaves writable
# (an emptyDir in Kubernetes). RECSTACK_DATABASE_URL has no default: a service without it stops.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONSAFEPATH=1 \
    RECSTACK_GRPC_HOST=0.0.0.0 \
    RECSTACK_METRICS_PORT=9464 \
    RECSTACK_RUN_DIR=/tmp/recstack

WORKDIR /var/lib/recstack
USER ${UID}:${GID}

# Metrics port; each service image adds its gRPC port, health check and command.
EXPOSE 9464
# The servers stop gracefully on SIGTERM (server.stop(grace)); stated so no base image changes it.
STOPSIGNAL SIGTERM
