# CBIR workbench: one image for the Streamlit app and the REST sidecar.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KERAS_HOME=/app/models_cache \
    CBIR_MODELS_CACHE=/app/models_cache \
    CBIR_COLLECTION=/app/image.orig \
    CBIR_FEATURES_DIR=/app/features \
    CBIR_VAR_DIR=/app/var \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /app
RUN groupadd --system --gid 10001 cbir && useradd --system --uid 10001 --gid cbir --home-dir /app cbir

# Dependencies first, in their own layer: code changes do not reinstall TensorFlow.
COPY pyproject.toml README.md ./
RUN mkdir -p cbir && touch cbir/__init__.py \
    && pip install . \
    && pip uninstall -y cbir-workbench

COPY cbir ./cbir
COPY app.py ./
COPY app_pages ./app_pages
COPY .streamlit ./.streamlit
RUN pip install --no-deps .

# Pre-download the Keras ImageNet weights for images that must start offline:
#   docker build --build-arg PREFETCH_WEIGHTS=1 .
ARG PREFETCH_WEIGHTS=0
RUN mkdir -p /app/models_cache /app/var /app/features \
    && if [ "$PREFETCH_WEIGHTS" = "1" ]; then cbir weights download; fi \
    && python -c "from cbir.extractors import build_extractor as b; [b(m) for m in ('efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2')]"

COPY features ./features
COPY image.orig ./image.orig
RUN chown -R cbir:cbir /app/models_cache /app/var /app/features

USER cbir
EXPOSE 8000 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)" || exit 1
CMD ["cbir", "api", "--host", "0.0.0.0", "--port", "8000"]
