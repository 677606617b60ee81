# slimformer's service image: a static-ish Rust binary on a slim base, run as a
# non-root user. The model is mounted at /model (or baked in with --build-arg MODEL_DIR).
#
#   docker build -t slimformer .
#   docker run -p 8080:8080 -v $PWD/assets/all-MiniLM-L6-v2:/model:ro slimformer
#   docker build -t slimformer-minilm --build-arg MODEL_DIR=assets/all-MiniLM-L6-v2 .

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p slimformer-cli \
 && strip target/release/slimformer \
 && mkdir -p /empty-model

FROM debian:bookworm-slim AS runtime
ARG MODEL_DIR=
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /nonexistent --shell /usr/sbin/nologin slimformer
COPY --from=build /src/target/release/slimformer /usr/local/bin/slimformer
# An empty /model unless MODEL_DIR names a folder of the build context to bake in.
COPY --from=build /empty-model /model
COPY ${MODEL_DIR:-.dockerignore} /model-baked/
RUN if [ -n "$MODEL_DIR" ]; then cp -r /model-baked/. /model/; fi && rm -rf /model-baked
USER 10001
ENV SLIMFORMER_MODEL=/model \
    SLIMFORMER_HOST=0.0.0.0 \
    SLIMFORMER_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["slimformer"]
CMD ["serve"]
