# slimformer's service image: one static binary in an image FROM scratch, run as a
# non-root user, with the model mounted read-only at /model (or baked in).
#
#   docker build -t slimformer .
#   docker run -p 8080:8080 -v $PWD/assets/all-MiniLM-L6-v2:/model:ro slimformer
#   docker build -t slimformer-minilm --build-arg MODEL_DIR=assets/all-MiniLM-L6-v2 .
#
# The first stage needs the rust image; where no image can be pulled,
# scripts/build-image.sh builds the same runtime stage from a binary built on the host.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
ARG MODEL_DIR=
RUN scripts/build-static.sh /rootfs/slimformer \
 && mkdir -p /rootfs/model \
 && if [ -n "$MODEL_DIR" ]; then cp -r "$MODEL_DIR"/. /rootfs/model/; fi

# The runtime stage: written once, also used by scripts/build-image.sh.
FROM scratch AS runtime
COPY --from=build /rootfs/ /
USER 10001:10001
ENV SLIMFORMER_MODEL=/model \
    SLIMFORMER_HOST=0.0.0.0 \
    SLIMFORMER_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
  CMD ["/slimformer", "probe"]
ENTRYPOINT ["/slimformer"]
CMD ["serve"]
