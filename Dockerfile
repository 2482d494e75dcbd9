# The ltrr server. Build from the repository root: docker build -t ltrr .
FROM python:3.11-slim AS build
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project --no-install-package ltrr-client
COPY server server
COPY clients clients
RUN uv sync --frozen --no-dev

FROM python:3.11-slim
RUN useradd --create-home ltrr
COPY --from=build /app /app
# The production starting point, not the demo: no catalog, no policies, API keys required. The
# demo instead: -e LTRR_CONFIG=demo (deploy/docker-compose.yml does). Any setting from the
# environment: LTRR_<KEY>, LTRR_<SECTION>__<KEY>.
COPY deploy/ltrr.toml /etc/ltrr/ltrr.toml
ENV PATH=/app/.venv/bin:$PATH
ENV LTRR_CONFIG=/etc/ltrr/ltrr.toml
WORKDIR /data
RUN chown ltrr /data
USER ltrr
EXPOSE 50051 9464
# A demo's first start builds its catalog and models (about a minute; more on a busy host): health
# answers NOT_SERVING meanwhile, which the start period does not count against the container.
HEALTHCHECK --interval=10s --timeout=3s --start-period=600s CMD python -c "import grpc,sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; sys.exit(g.HealthStub(grpc.insecure_channel('localhost:50051')).Check(h.HealthCheckRequest(), timeout=2).status != 1)"
ENTRYPOINT ["ltrr"]
# A container is reached through its published port, so it binds every interface; the
# configuration requires keys (make one: docker exec CONTAINER ltrr keys create --tenant default
# --role admin). Add TLS (LTRR_TLS_CERT, LTRR_TLS_KEY) before serving beyond the machine.
CMD ["serve", "--host", "0.0.0.0"]
