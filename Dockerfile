# One image for both services and the operator CLI; docker-compose.yml picks the command:
#   python -m delivery_service --host 0.0.0.0     python -m mta_stub --host 0.0.0.0
# Beyond loopback a server serves TLS (DELIVERY_TLS_CERT/KEY, MTA_TLS_CERT/KEY) or refuses
# to start, unless told --insecure. Only PyPI is reached at build time (pip).

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Just what the package is made of: its config and the packages it installs.
COPY pyproject.toml ./
COPY protos ./protos
COPY grpc_common ./grpc_common
COPY delivery_service ./delivery_service
COPY mta_stub ./mta_stub
COPY campaign_cli ./campaign_cli
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app \
    && mkdir -p /var/lib/mta-stub && chown app /var/lib/mta-stub
# The delivery service keeps no files: its state is in PostgreSQL. The stub keeps its
# spool (--spool) under /var/lib/mta-stub, a volume in docker-compose.yml.
USER app
WORKDIR /tmp
EXPOSE 50051 50052 9100 9101
CMD ["python", "-m", "delivery_service", "--host", "0.0.0.0"]
