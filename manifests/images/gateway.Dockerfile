# syntax=docker/dockerfile:1
# pdserve's own image (the chart's images.gateway): the gateway (`pdserve gateway`), the
# simulated worker (`pdserve worker --engine sim`) and the init container that writes a seeded
# checkpoint (tiny, small) into the model cache (`pdserve model tiny --out /models/tiny`).
#
# Slim: no torch and no vLLM. Worker pods run vLLM's own upstream image (vllm/vllm-openai for
# CUDA, vLLM's CPU image for cpu; images.vllmCuda / images.vllmCpu) with the command and flags
# `pdserve render` writes; nothing of pdserve runs inside them. No tokenizer is baked in: the
# gateway reads tokenizer.json and the chat template from the model directory (model.source, in
# the model cache the chart mounts at /models), as the workers do.
#
# Build from the repository root (tests/test_package_image.py checks this file):
#   docker build -f manifests/images/gateway.Dockerfile -t ghcr.io/pdserve/pdserve:0.1.0 .
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pdserve/ pdserve/
COPY profiles/ profiles/
COPY manifests/helm/pdserve/ manifests/helm/pdserve/
RUN python -m pip wheel --no-deps --no-cache-dir -w /wheels .

FROM ${BASE}
# pdserve's own dependencies (none pulls torch) and the Kubernetes client the gateway's
# kubernetes actuator uses.
ARG EXTRAS=kubernetes
COPY --from=wheel /wheels /wheels
RUN python -m pip install --no-cache-dir "$(echo /wheels/pdserve-*.whl)[${EXTRAS}]" \
    && rm -rf /wheels
# A numeric non-root user (Pod Security "restricted" checks runAsNonRoot against it) with a
# writable cache for seeded checkpoints; mount an emptyDir there for a read-only root.
RUN groupadd --gid 1000 pdserve \
    && useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin pdserve \
    && install -d -o 1000 -g 1000 /var/cache/pdserve
ENV PDSERVE_CACHE_DIR=/var/cache/pdserve \
    HF_HUB_OFFLINE=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 1000:1000
WORKDIR /home/pdserve
EXPOSE 8000
ENTRYPOINT ["pdserve"]
CMD ["gateway", "--profile", "/etc/pdserve/profile.yaml", "--host", "0.0.0.0", "--port", "8000"]
