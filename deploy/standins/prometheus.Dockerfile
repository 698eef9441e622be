# A local stand-in for prom/prometheus:v2.53.0 (Docker Hub is not reachable on CI): Debian's
# prometheus on the local base image of ../shared/tools/docker-local.sh, with the official
# image's entrypoint (the compose file passes flags only) and wget for the healthcheck.
#   docker build -f deploy/standins/prometheus.Dockerfile -t prom/prometheus:v2.53.0 deploy/standins
FROM localbase:bookworm
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends prometheus wget && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus /etc/prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
