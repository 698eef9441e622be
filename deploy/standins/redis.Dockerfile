# A local stand-in for redis:7-alpine (Docker Hub is not reachable on CI): Debian's redis-server
# on the local base image of ../shared/tools/docker-local.sh. The compose file runs
# `redis-server ...` and probes with `redis-cli`, both here.
#   docker build -f deploy/standins/redis.Dockerfile -t redis:7-alpine deploy/standins
FROM localbase:bookworm
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends redis-server redis-tools && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data
WORKDIR /data
EXPOSE 6379
CMD ["redis-server"]
