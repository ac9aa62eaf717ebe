# A stand-in for the official redis image where no registry can be reached (deploy/images.sh):
# Debian's redis-server on the local base, run the way the official image runs it (as `redis`, in
# /data, the command's flags going to redis-server).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends redis-server && rm -rf /var/lib/apt/lists/* \
    && install -d -o redis -g redis /data
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
USER redis
WORKDIR /data
ENTRYPOINT ["docker-entrypoint.sh"]
EXPOSE 6379
CMD ["redis-server"]
