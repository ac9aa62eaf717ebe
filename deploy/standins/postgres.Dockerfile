# A stand-in for the official postgres image where no registry can be reached (deploy/images.sh):
# Debian's PostgreSQL 15 on the local base, started the way the official image is (POSTGRES_USER,
# POSTGRES_PASSWORD, POSTGRES_DB on first start; data in /var/lib/postgresql/data; the command's
# flags go to `postgres`, e.g. `postgres -c port=5433`).
FROM python:3.11-slim
# No cluster of Debian's own: the entrypoint makes the data folder on first start.
RUN mkdir -p /etc/postgresql-common && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf \
    && apt-get update && apt-get install -y --no-install-recommends postgresql-15 && rm -rf /var/lib/apt/lists/* \
    && install -d -o postgres -g postgres -m 700 /var/lib/postgresql/data \
    && install -d -o postgres -g postgres /var/run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
USER postgres
ENTRYPOINT ["docker-entrypoint.sh"]
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
