# One image for both roles: `gouache web` and `gouache worker` (or `gouache dev` for one box).
# GPU workers: build with --build-arg TORCH=torch==2.13.0 (the default PyPI wheel carries CUDA)
# and run with --gpus all.
FROM node:20-bookworm-slim AS assets
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund

FROM python:3.11-slim-bookworm
ARG TORCH=torch==2.13.0
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 GOUACHE_DATA_DIR=/data
WORKDIR /app
RUN pip install "${TORCH}"
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
RUN pip install -e .
COPY migrations ./migrations
COPY templates ./templates
COPY static ./static
COPY models ./models
COPY --from=assets /src/node_modules/htmx.org/dist/htmx.min.js ./static/vendor/htmx.min.js
RUN useradd --create-home gouache && mkdir -p /data && chown gouache /data
USER gouache
VOLUME /data
EXPOSE 8000
CMD ["gouache", "dev", "--host", "0.0.0.0", "--port", "8000"]
