# bifrost-rt: the wheel is built in one stage (Rust + maturin), installed in a slim runtime stage.
#   docker build -t bifrost-rt .
#   docker run -p 8080:8080 -v $PWD/gateway.yaml:/etc/bifrost-rt/gateway.yaml:ro bifrost-rt
# The configuration must listen on 0.0.0.0 inside the container (server.host, or --host as below).

FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
ENV PATH="/root/.cargo/bin:${PATH}"
RUN pip install --no-cache-dir "maturin>=1.5,<2"
WORKDIR /src
COPY Cargo.toml Cargo.lock pyproject.toml README.md ./
COPY src ./src
COPY python ./python
RUN maturin build --release --out /dist

FROM python:3.11-slim-bookworm AS runtime
COPY --from=build /dist /dist
RUN pip install --no-cache-dir /dist/*.whl && rm -rf /dist \
    && useradd --system --create-home --home-dir /var/lib/bifrost-rt bifrost-rt
USER bifrost-rt
WORKDIR /var/lib/bifrost-rt
EXPOSE 8080
# uvicorn drains on SIGTERM; give the container runtime's stop timeout more than realtime.shutdown_drain_s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["bifrost-rt", "serve"]
CMD ["--config", "/etc/bifrost-rt/gateway.yaml", "--host", "0.0.0.0"]
