# LossLab: the web app and API on CPU torch. Build: docker build -t losslab .
# Run: docker run --rm -p 8000:8000 losslab   then open http://127.0.0.1:8000
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    LOSSLAB_TORCH_THREADS=1

WORKDIR /app

# torch first, pinned to the CPU build (the same pin as the Makefile's TORCH_SPEC)
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"

COPY pyproject.toml README.md ./
COPY losscore ./losscore
COPY app ./app
COPY templates ./templates
COPY static ./static
RUN pip install . \
    && useradd --create-home --uid 10001 losslab

# Installed as a package, the app finds its page next to the working directory.
ENV LOSSLAB_TEMPLATES_DIR=/app/templates \
    LOSSLAB_STATIC_DIR=/app/static

USER losslab
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"
CMD ["losslab", "serve", "--host", "0.0.0.0", "--port", "8000"]
