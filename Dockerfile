# The service and worker image. Build targets:
#   docker build --target service -t neffcache-service .
#   docker build --target worker-inductor -t neffcache-worker-inductor .
# A neuronx-cc compile host adds the Neuron SDK's compiler to the service target's image
# (see deploy/README.md): the compiler installs only from AWS's Neuron package repository.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY neffcache ./neffcache
COPY service ./service
COPY workers ./workers
COPY client ./client
COPY migrations ./migrations
RUN useradd --create-home --uid 10001 neffcache

FROM base AS service
RUN pip install '.[server]'
USER neffcache
EXPOSE 8080
CMD ["neffcache-server", "serve", "--host", "0.0.0.0", "--port", "8080"]

FROM base AS worker-inductor
# inductor compiles C++: the worker needs a compiler toolchain.
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/* \
    && pip install '.[worker]'
USER neffcache
ENV NEFFCACHE_WORKER_BACKEND=inductor
CMD ["neffcache-worker"]
