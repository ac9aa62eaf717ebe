# The service and worker images (deploy/images.sh builds the first two; README, "Images"):
#   docker build --target service -t neffcache-service .
#   docker build --target worker-inductor --build-arg TORCH_WHEEL_IMAGE=... -t neffcache-worker-inductor .
#   docker build --target worker-neuronx-cc -t neffcache-worker-neuronx-cc .
# Layers: the dependencies install from pyproject.toml's pins (a list made from it, so only a
# change of the pins reinstalls them), the package itself after, from a wheel built apart; a code
# change rebuilds the last few small layers only. Everything runs as uid 10001 with /data (its
# own) as the working folder and the default SQLite and object store paths.

# The CPU torch wheel (2.13.0+cpu) as an image that holds only the wheel: deploy/images.sh makes it
# from the wheel on disk, or downloads it once from PyTorch's CPU index, never PyPI's CUDA build.
ARG TORCH_WHEEL_IMAGE=neffcache-torch-wheel:2.13.0-cpu

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/neffcache/bin:$PATH
RUN useradd --create-home --uid 10001 neffcache && install -d -o neffcache -g neffcache /data

# The pinned requirements of each image, as text: an unchanged list keeps the install layers cached.
FROM base AS requirements
WORKDIR /src
COPY pyproject.toml ./
COPY deploy/pyproject_requirements.py ./deploy/
RUN python deploy/pyproject_requirements.py pyproject.toml server > server.txt \
    && python deploy/pyproject_requirements.py pyproject.toml worker --without torch > worker.txt

# The neffcache wheel, built from the sources alone (its dependencies are in the layers above).
FROM base AS package
RUN pip install 'setuptools>=68' wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY neffcache ./neffcache
COPY service ./service
COPY workers ./workers
COPY client ./client
COPY migrations ./migrations
RUN pip wheel --no-deps --no-build-isolation -w /dist .

FROM base AS server-dependencies
COPY --from=requirements /src/server.txt /tmp/
RUN python -m venv /opt/neffcache && pip install -r /tmp/server.txt

FROM base AS service
COPY --from=server-dependencies /opt/neffcache /opt/neffcache
COPY --from=package /dist /tmp/dist
RUN pip install --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist
USER neffcache
WORKDIR /data
ENV NEFFCACHE_DATABASE_URL=sqlite:////data/neffcache.db NEFFCACHE_STORAGE_URL=/data/objects \
    NEFFCACHE_HEALTHCHECK_URL=http://127.0.0.1:8080/healthz
EXPOSE 8080
# No curl in the image: the interpreter asks /healthz (NEFFCACHE_HEALTHCHECK_URL where --port differs).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['NEFFCACHE_HEALTHCHECK_URL'], timeout=4)"]
CMD ["neffcache-server", "serve", "--host", "0.0.0.0", "--port", "8080"]
ARG VERSION=0.1.0 REVISION=unknown SOURCE=unknown
LABEL org.opencontainers.image.title="neffcache-service" org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$REVISION" org.opencontainers.image.source="$SOURCE"

FROM ${TORCH_WHEEL_IMAGE} AS torch-wheel

FROM server-dependencies AS worker-dependencies
# torch first, on its own: the largest layer, kept when only the other pins change.
COPY --from=torch-wheel / /tmp/wheels/
RUN pip install --find-links /tmp/wheels 'torch==2.13.0+cpu' && rm -rf /tmp/wheels
COPY --from=requirements /src/worker.txt /tmp/
RUN pip install -r /tmp/worker.txt

# A compile host for torch AOTInductor on CPU: inductor compiles C++, so the image keeps g++.
FROM base AS worker-inductor
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
COPY --from=worker-dependencies /opt/neffcache /opt/neffcache
COPY --from=package /dist /tmp/dist
RUN pip install --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist
USER neffcache
WORKDIR /data
ENV NEFFCACHE_WORKER_BACKEND=inductor NEFFCACHE_DATABASE_URL=sqlite:////data/neffcache.db \
    NEFFCACHE_STORAGE_URL=/data/objects
# Healthy while the worker's toolchain is there and its settings load (what the worker checks at start).
HEALTHCHECK --interval=60s --timeout=30s --start-period=30s --retries=3 CMD ["neffcache-worker", "--print-toolchain"]
CMD ["neffcache-worker"]
ARG VERSION=0.1.0 REVISION=unknown SOURCE=unknown
LABEL org.opencontainers.image.title="neffcache-worker-inductor" org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$REVISION" org.opencontainers.image.source="$SOURCE"

# A compile host for neuronx-cc: the server dependencies, the Neuron SDK's compiler from AWS's pip
# repository and aws-neuronx-tools from its apt repository (neither is reachable from the CI
# machines: deploy/images.sh does not build this one). NEURON_APT_SUITE: AWS publishes Ubuntu
# suites only; jammy's packages install on bookworm.
FROM base AS worker-neuronx-cc
ARG NEURONX_CC_VERSION=2.27.5334.0 NEURON_APT_SUITE=jammy
RUN install -d /etc/apt/keyrings \
    && python -c "import urllib.request; urllib.request.urlretrieve('https://apt.repos.neuron.amazonaws.com/GPG-PUB-KEY-AMAZON-AWS-NEURON.PUB', '/etc/apt/keyrings/neuron.asc')" \
    && echo "deb [signed-by=/etc/apt/keyrings/neuron.asc] https://apt.repos.neuron.amazonaws.com $NEURON_APT_SUITE main" \
       > /etc/apt/sources.list.d/neuron.list \
    && apt-get update && apt-get install -y --no-install-recommends aws-neuronx-tools \
    && rm -rf /var/lib/apt/lists/*
COPY --from=server-dependencies /opt/neffcache /opt/neffcache
RUN pip install --extra-index-url https://pip.repos.neuron.amazonaws.com "neuronx-cc==$NEURONX_CC_VERSION"
COPY --from=package /dist /tmp/dist
RUN pip install --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist
USER neffcache
WORKDIR /data
ENV NEFFCACHE_WORKER_BACKEND=neuronx-cc NEFFCACHE_DATABASE_URL=sqlite:////data/neffcache.db \
    NEFFCACHE_STORAGE_URL=/data/objects
HEALTHCHECK --interval=60s --timeout=30s --start-period=30s --retries=3 CMD ["neffcache-worker", "--print-toolchain"]
CMD ["neffcache-worker"]
ARG VERSION=0.1.0 REVISION=unknown SOURCE=unknown
LABEL org.opencontainers.image.title="neffcache-worker-neuronx-cc" org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$REVISION" org.opencontainers.image.source="$SOURCE"
