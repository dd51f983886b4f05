# syntax=docker/dockerfile:1.7
# Two targets on one NVIDIA CUDA base:
#   docker build --target serve -t projgan:serve .   # default: pipeline serve on :8000, TensorRT included
#   docker build --target train -t projgan:train .   # pipeline train (torchrun for several GPUs)
# Models and runs live in volumes (/models, /runs); the image holds code only.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && useradd --create-home --uid 10001 projgan

FROM base AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY projgan ./projgan
COPY train ./train
COPY export ./export
COPY serve ./serve
COPY evaluation ./evaluation
# TensorRT wheels come from NVIDIA's own index (the PyPI packages are stubs that fetch from it).
RUN pip install --extra-index-url https://pypi.nvidia.com ".[tensorrt]"

FROM base AS serve
COPY --from=build /opt/venv /opt/venv
USER 10001
WORKDIR /home/projgan
VOLUME ["/models"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["pipeline"]
CMD ["serve", "/models", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS train
COPY --from=build /opt/venv /opt/venv
USER 10001
WORKDIR /home/projgan
VOLUME ["/data", "/runs"]
ENTRYPOINT ["pipeline"]
CMD ["train", "--data", "/data", "--out", "/runs/run"]
