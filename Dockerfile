# syntax=docker/dockerfile:1
# itcare-token-operator: build a wheel, install it into a virtualenv, copy the
# virtualenv into a slim runtime image that has no build tools and runs as non-root.

ARG PYTHON_VERSION=3.12
# The base of both stages. Pin it by digest for a reproducible image
# (--build-arg BASE_IMAGE=python:3.12-slim@sha256:...), or point it at a local image
# where the registry cannot be reached (the test node builds one from Debian packages).
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim

FROM ${BASE_IMAGE} AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The runtime dependencies come from the lock, every file checked against its hash
# (`make lock` regenerates it); the build tools stay in this stage's own venv.
COPY requirements.lock ./
RUN python -m venv /opt/itcare \
    && /opt/itcare/bin/pip install --no-compile --require-hashes --only-binary=:all: \
       -r requirements.lock
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --no-compile build==1.2.2 \
    && /opt/build/bin/python -m build --wheel --outdir /dist . \
    && /opt/itcare/bin/pip install --no-compile --no-deps /dist/*.whl

FROM ${BASE_IMAGE}
ARG VERSION=0.2.0
LABEL org.opencontainers.image.title="itcare-token-operator" \
      org.opencontainers.image.description="Keeps a fresh cegedim.cloud ITCare OAuth2 token in a Kubernetes Secret" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/itcare-token-operator/itcare-token-operator"
ENV PATH=/opt/itcare/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /opt/itcare /opt/itcare
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["itcare-operator"]
CMD ["run"]
