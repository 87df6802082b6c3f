# One image for both services and the operator CLI; docker-compose.yml picks the command:
#   python -m delivery_service --host 0.0.0.0     python -m mta_stub --host 0.0.0.0
# Only PyPI is reached at build time (pip).

FROM python:3.11-slim AS build
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

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app
# The services keep no files: state is in PostgreSQL (and in memory in the stub).
USER app
WORKDIR /tmp
EXPOSE 50051 50052 9100 9101
CMD ["python", "-m", "delivery_service", "--host", "0.0.0.0"]
