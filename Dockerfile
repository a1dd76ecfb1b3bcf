# edgebridge and paymentd on an empty base. Build it with `make image`, which
# first compiles both as static binaries (CGO_ENABLED=0, -trimpath) into
# build/image/ and copies the host's CA roots there. There is deliberately
# no builder stage: a `FROM golang` stage needs a registry, and edge sites
# and CI often have none. Nothing here is pulled; the image builds offline
# with docker or podman.
#
#   edgebridge (default)   the bridge: run -config /etc/edgebridge/edgebridge.yaml
#   edgebridge broker ...  an embedded MQTT or Kafka broker
#   edgebridge probe ...   health check (there is no shell or curl)
#   paymentd               the reference backend (--entrypoint paymentd)
FROM scratch

ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="edgebridge" \
      org.opencontainers.image.description="MQTT -> Kafka -> gRPC bridge for edge payment devices, with the paymentd reference backend" \
      org.opencontainers.image.source="https://github.com/edgebridge/edgebridge" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"

COPY build/image/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY build/image/edgebridge build/image/paymentd /usr/local/bin/
COPY deploy/image/edgebridge.yaml /etc/edgebridge/edgebridge.yaml
# /data and /tmp owned by the runtime user: a named volume mounted on /data
# starts with this ownership; /tmp is where the Dapr socket folder defaults.
COPY --chown=65532:65532 build/image/data/ /data/
COPY --chown=65532:65532 build/image/data/ /tmp/

ENV PATH=/usr/local/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt EDGEBRIDGE_CONFIG=/etc/edgebridge/edgebridge.yaml
USER 65532:65532
WORKDIR /data
VOLUME ["/data"]
# MQTT for devices, the admin endpoint (/metrics, /healthz, /readyz),
# paymentd's gRPC port.
EXPOSE 8883 8884 9464 7070
ENTRYPOINT ["edgebridge"]
CMD ["run", "-config", "/etc/edgebridge/edgebridge.yaml"]
