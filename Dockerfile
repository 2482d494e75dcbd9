# The ltrr server. Build from the repository root: docker build -t ltrr .
FROM python:3.11-slim AS build
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY server server
COPY clients clients
RUN uv sync --frozen --no-dev

FROM python:3.11-slim
RUN useradd --create-home ltrr
COPY --from=build /app /app
ENV PATH=/app/.venv/bin:$PATH
WORKDIR /data
RUN chown ltrr /data
USER ltrr
EXPOSE 50051 9464
# A first start builds the demo catalog and models (about a minute; more on a busy host): health
# answers NOT_SERVING meanwhile, which the start period does not count against the container.
HEALTHCHECK --interval=10s --timeout=3s --start-period=600s CMD python -c "import grpc,sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; sys.exit(g.HealthStub(grpc.insecure_channel('localhost:50051')).Check(h.HealthCheckRequest(), timeout=2).status != 1)"
ENTRYPOINT ["ltrr"]
# A container is reached through its published port, so the demo binds every interface with no
# authentication (--insecure): publish it on loopback only, as deploy/docker-compose.yml does. In
# production set LTRR_AUTH=keys (and TLS) instead, and make keys with `ltrr keys create`.
CMD ["serve", "--host", "0.0.0.0", "--insecure"]
