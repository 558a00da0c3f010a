# LossLab: the web app and API on CPU torch, installed from the project's own wheel.
#   docker build -t losslab .
#   docker run --rm -p 8000:8000 losslab            # http://127.0.0.1:8000
#   docker run --rm -e PORT=9000 -p 9000:9000 losslab   # hosted platforms set PORT; the server follows it

# -- build: the wheel, exactly as `pip wheel .` builds it anywhere (tests/test_packaging.py checks it) --
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY losscore ./losscore
COPY app ./app
COPY templates ./templates
COPY static ./static
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# -- run: CPU torch pinned first (the Makefile's TORCH_SPEC), then the wheel and its dependencies --
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LOSSLAB_TORCH_THREADS=1 \
    PORT=8000
# torch>=2.2 in the wheel's requirements is then met by this CPU build: pip never pulls a CUDA one
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install /tmp/dist/losslab-*.whl \
    && rm -rf /tmp/dist \
    && useradd --create-home --uid 10001 losslab
USER losslab
# any directory works: the page ships inside the package (losslab_web/templates, losslab_web/static)
WORKDIR /home/losslab
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4).status != 200)"
# losslab serve reads the port from $PORT (LOSSLAB_PORT wins if set) and applies its serving limits
# (app/server.py). Exec form: losslab runs as PID 1 and gets `docker stop`s SIGTERM itself,
# so it shuts down gracefully (timeout_graceful_shutdown).
CMD ["losslab", "serve", "--host", "0.0.0.0"]
