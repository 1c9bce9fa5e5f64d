# syntax=docker/dockerfile:1
# zitadel-rotator container image:
#   docker build -t <registry>/zitadel-rotator:0.1.0 .
#   docker run --rm -v "$PWD/config.yaml:/etc/zitadel-rotator/config.yaml:ro" \
#     <registry>/zitadel-rotator:0.1.0 validate
#
# Two stages. The builder turns the project and its dependencies into wheels
# and installs them into a virtualenv; the final image receives only that
# virtualenv on a clean slim Python, runs as uid 65532 and carries no pip,
# compiler or build backend. Every dependency ships as a binary wheel, so the
# builder needs no compiler either.

FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY rotator ./rotator
RUN python -m pip wheel --wheel-dir /wheels . \
 && python -m venv /opt/rotator \
 && /opt/rotator/bin/pip install --no-index --find-links /wheels zitadel-rotator \
 && /opt/rotator/bin/pip uninstall --yes pip setuptools \
 && /opt/rotator/bin/rotator --help > /dev/null

FROM python:3.11-slim
LABEL org.opencontainers.image.title="zitadel-rotator" \
      org.opencontainers.image.description="Rotates ZITADEL service-user credentials into HashiCorp Vault" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
# The runtime needs no installer: remove pip from the base image as well.
RUN python -m pip uninstall --yes --root-user-action=ignore pip setuptools wheel \
 && groupadd --system --gid 65532 rotator \
 && useradd --system --uid 65532 --gid 65532 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin rotator
COPY --from=builder /opt/rotator /opt/rotator
# Byte code was compiled at install time; the root filesystem may be read-only.
# glibc malloc: two arenas instead of one per worker thread, and large blocks
# (a /metrics body is ~0.85 MB per 1,000 targets) always mmap()ed, so freed memory
# goes back to the system: the daemon's RSS grows far less with targets
# (README, "Operating it").
ENV PATH=/opt/rotator/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MALLOC_ARENA_MAX=2 \
    MALLOC_MMAP_THRESHOLD_=131072
USER 65532:65532
# /healthz, /readyz and /metrics (daemon.listen).
EXPOSE 9102
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9102/healthz', timeout=3)"]
ENTRYPOINT ["rotator"]
CMD ["run"]
