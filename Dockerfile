# One image recipe for every Flywheel service, parameterised by the service's folder under services/.
# The build context is the repository root:
#   docker build --build-arg SERVICE=registry -t flywheel/registry .
#   docker build --build-arg SERVICE=trainer --build-arg GIT_COMMIT=$(git rev-parse HEAD) -t flywheel/trainer .
# What goes in is read from the pyproject files by tools/image_requirements.py: the service, the libs it
# depends on (libs/, libs/predictive), their third-party dependencies. Torch is installed only when those
# ask for it, and then as the CPU-only build from the PyTorch index (PyPI's default wheel drags in ~3 GB
# of CUDA libraries). No dev tools, no embedded broker/database (the [embedded] extra).

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a virtualenv holding the service's distributions and their dependencies ----
FROM ${PYTHON_IMAGE} AS build

ARG SERVICE
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH
RUN test -n "${SERVICE}" || { echo "set --build-arg SERVICE=<a folder under services/>" >&2; exit 1; } \
 && python -m venv /opt/venv
WORKDIR /src

# Third-party dependencies first (torch, when needed, as its own layer), read from the pyproject files only,
# so these layers are rebuilt when a dependency list changes, not on every code change.
COPY tools/image_requirements.py tools/image_requirements.py
COPY libs/pyproject.toml libs/pyproject.toml
COPY libs/predictive/pyproject.toml libs/predictive/pyproject.toml
COPY services/${SERVICE}/pyproject.toml services/${SERVICE}/pyproject.toml
RUN if python tools/image_requirements.py "${SERVICE}" --needs-torch; then \
      pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; fi
RUN python tools/image_requirements.py "${SERVICE}" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# Then the code (generated protobuf modules are committed under libs/flywheel/proto).
COPY libs/ libs/
COPY services/${SERVICE}/ services/${SERVICE}/
RUN pip install --no-deps $(python tools/image_requirements.py "${SERVICE}" --local) \
 && pip check

# ---- runtime: the virtualenv on a clean slim image, run as a non-root user ----
FROM ${PYTHON_IMAGE} AS runtime

ARG SERVICE
# The git commit the image was built from: an image label, and the trainer's code_version in lineage.
ARG GIT_COMMIT=""

LABEL org.opencontainers.image.title="flywheel-${SERVICE}" \
      org.opencontainers.image.source="services/${SERVICE}" \
      org.opencontainers.image.revision="${GIT_COMMIT}"

# A fixed numeric uid so Kubernetes `runAsNonRoot` can verify it.
RUN groupadd --system --gid 10001 flywheel \
 && useradd --system --uid 10001 --gid flywheel --home-dir /var/lib/flywheel --shell /usr/sbin/nologin flywheel \
 && mkdir -p /var/lib/flywheel \
 && chown flywheel:flywheel /var/lib/flywheel

COPY --from=build /opt/venv /opt/venv

# FLYWHEEL_HOME holds local state (scratch, or a file:// artifact store: mount a volume there if it must
# survive). Where a service listens and what it reads (FLYWHEEL_<SERVICE>_GRPC_HOST=0.0.0.0 in a
# container, a mounted Feast repo or model specs) is configuration: compose.yaml and infra/k8s set it.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FLYWHEEL_SERVICE=${SERVICE} \
    FLYWHEEL_HOME=/var/lib/flywheel \
    FLYWHEEL_LOG_JSON=true \
    FLYWHEEL_TRAINER_CODE_VERSION=${GIT_COMMIT}

WORKDIR /var/lib/flywheel
USER 10001:10001

# `python -m flywheel.<service>`; arguments given to `docker run` are passed on (e.g. --help).
ENTRYPOINT ["sh", "-c", "exec python -m \"flywheel.${FLYWHEEL_SERVICE}\" \"$@\"", "flywheel"]
