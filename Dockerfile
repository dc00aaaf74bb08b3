# rayline project image: Ray 2.60 + torch 2.13 (CUDA) + MLflow + the rayline code.
# Used by every Ray pod of the Helm chart (helm/rayline) and, by default, the MLflow server.
#
#   docker build -t ghcr.io/rayline/rayline:0.1.0 .
#
# The base is CUDA's `base` flavour (no CUDA or cuDNN libraries, ~0.1 GB instead of the
# `cudnn-runtime` flavour's ~3 GB): torch's wheels bring their own CUDA, cuDNN and NCCL
# user-space libraries (the nvidia-* wheels), and the driver comes from the node through the
# NVIDIA container toolkit. Pin it by digest for reproducible builds:
#   docker build --build-arg CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu22.04@sha256:<digest> .
# and run the pushed image by digest too (`image.digest` in the chart's values).
#
# DeepSpeed's `cpu_adam` op (ZeRO optimizer offload) is compiled here, in the build stage: the
# runtime stage has no compiler, so a JIT build there would fail. DeepSpeed compiles it with
# -march=native, i.e. for the build machine's CPU: build on (or for) the CPU generation of the
# GPU nodes. Runs as UID 10001, matching the chart's securityContext; every writable path is
# under /tmp (an emptyDir in the chart). wget is there for KubeRay's default probes.

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu22.04

FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3.11=3.11.* python3.11-venv=3.11.* python3.11-dev=3.11.* build-essential=12.* \
 && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, pinned: an unpinned resolution could pick another CUDA build.
RUN pip install torch==2.13.0
# DeepSpeed (the pyproject pin) with its CPU Adam op prebuilt; DS_ACCELERATOR=cuda because the
# build has no GPU to detect. The import proves the op is in the package, not JIT-built.
RUN DS_BUILD_CPU_ADAM=1 DS_ACCELERATOR=cuda pip install deepspeed==0.19.8 \
 && DS_ACCELERATOR=cuda python -c "import deepspeed.ops.adam.cpu_adam_op"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cluster ./cluster
COPY jobs ./jobs
COPY deployments ./deployments
COPY ingest ./ingest
COPY train ./train
COPY models ./models
# The project with its pinned dependencies (ray[serve,train]==2.60.0, mlflow, deepspeed...),
# plus the MLflow server's PostgreSQL driver and S3 client.
RUN pip install . psycopg2-binary==2.9.13 boto3==1.44.5

FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp/home \
    RAYLINE_LOG_FORMAT=json
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3.11=3.11.* libgomp1=12.* ca-certificates=* wget=1.21.* \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 rayline \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp/home --shell /usr/sbin/nologin rayline
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The code stays importable from the working directory too (`python -m jobs.train`).
COPY --chown=root:root cluster ./cluster
COPY --chown=root:root jobs ./jobs
COPY --chown=root:root deployments ./deployments
COPY --chown=root:root ingest ./ingest
COPY --chown=root:root train ./train
COPY --chown=root:root models ./models
# Contracts, training configs and the example table the chart's default RayJobs name (/app/examples/...).
COPY --chown=root:root examples ./examples
# The prebuilt CPU Adam op loads without a compiler (there is none in this stage).
RUN DS_ACCELERATOR=cuda python -c "import deepspeed.ops.adam.cpu_adam_op"
USER 10001:10001
EXPOSE 6379 8265 10001 8000 8080 5000
HEALTHCHECK NONE
CMD ["python", "-c", "import ray, torch, mlflow; print(ray.__version__, torch.__version__, mlflow.__version__)"]
