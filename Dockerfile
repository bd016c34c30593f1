# recsys: one image for the trainer job and the gRPC server (docker-compose.yml runs both).
#   docker build -t recsys .
#   docker run --rm -p 50051:50051 -p 9100:9100 -v artifacts:/artifacts:ro recsys \
#       python -m serving --artifact /artifacts --port 50051 --metrics-port 9100
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# torch first, from the CPU index and in its own layer: pyproject pins torch==2.13.0, so the
# `pip install .` below finds it satisfied instead of pulling the multi-GB CUDA build from PyPI, and
# code changes do not invalidate this (largest) layer.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# pyproject.toml names README.md as the readme, so the build needs it.
COPY pyproject.toml README.md ./
COPY recsys/ recsys/
COPY training/ training/
COPY serving/ serving/
COPY proto/ proto/
COPY bench/ bench/
RUN pip install .

# Non-root. /data (the trainer's scratch) and /artifacts must be writable by it: Docker seeds an
# empty named volume from the image's directory, ownership included, so the `artifacts` volume
# starts out owned by this user.
RUN useradd --create-home --uid 10001 recsys \
    && mkdir -p /data /artifacts \
    && chown recsys:recsys /data /artifacts
USER recsys

# 50051: gRPC (recommendations + grpc.health.v1); 9100: Prometheus metrics.
EXPOSE 50051 9100

CMD ["python", "-m", "serving"]
