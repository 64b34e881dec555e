# One multi-stage Dockerfile for the whole platform (docs/deploy.md):
#   target "motehub"  every daemon and tool (one image, a different command
#                     per container: smaller registry footprint, one build)
#   target "broker"   Debian's mosquitto with the motehub_acl plugin and the
#                     configuration generator
# docker build --target motehub -t motehub/motehub:dev .
# docker build --target broker  -t motehub/broker:dev .

FROM debian:12-slim AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential pkg-config meson ninja-build libzmq3-dev libczmq-dev libpaho-mqtt-dev \
      librdkafka-dev libpq-dev libprotobuf-c-dev protobuf-c-compiler libssl-dev libjansson-dev \
      libmicrohttpd-dev libcmocka-dev libcurl4-openssl-dev libcivetweb-dev zlib1g-dev \
      mosquitto-dev libmosquitto-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN meson setup /build --buildtype=release --prefix=/usr -Dtests=false \
    && ninja -C /build \
    && DESTDIR=/out meson install -C /build --skip-subprojects \
    && install -D -m 755 deploy/mosquitto/mosquitto-conf.sh /out/usr/bin/motehub-mosquitto-conf \
    && install -D -m 755 deploy/make-secrets.sh /out/usr/share/motehub/make-secrets.sh \
    && rm -rf /out/usr/bin/test_* /out/usr/include

FROM node:20-bookworm-slim AS dashboard
WORKDIR /dashboard
COPY dashboard/package.json dashboard/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY dashboard/ ./
# the API client's types come from the API's OpenAPI document
COPY services/fleet-stats/openapi.json /services/fleet-stats/openapi.json
RUN npm run build

FROM debian:12-slim AS motehub
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libzmq5 libczmq4 libpaho-mqtt1.3 librdkafka1 libpq5 libprotobuf-c1 libssl3 libjansson4 \
      libmicrohttpd12 libcurl4 libcivetweb1 zlib1g openssl ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/motehub motehub
COPY --from=build /out/usr/ /usr/
COPY --from=dashboard /dashboard/dist/ /usr/share/motehub/dashboard/
USER motehub
# every daemon serves /healthz and /readyz on MH_HTTP_LISTEN
CMD ["motehub-gateway", "--help"]

FROM debian:12-slim AS broker
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      mosquitto mosquitto-clients libpq5 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /mosquitto/data && chown mosquitto:mosquitto /mosquitto/data
COPY --from=build /out/usr/lib/ /usr/lib/
COPY --from=build /out/usr/bin/motehub-mosquitto-conf /usr/bin/
# certificates mounted at /etc/motehub/secrets/broker (deploy/make-secrets.sh)
CMD ["sh", "-c", "motehub-mosquitto-conf --certs /etc/motehub/secrets/broker --plugin \"$(find /usr/lib -name motehub_acl.so | head -1)\" --data /mosquitto/data > /tmp/mosquitto.conf && exec mosquitto -c /tmp/mosquitto.conf"]
