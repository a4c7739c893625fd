# Two images, both installed with the pins of requirements.lock:
#   docker build -t gouache .                     web + worker (the default): `gouache dev` on one box,
#                                                 or `gouache worker` on each GPU machine
#   docker build --target web -t gouache-web .    the web app alone, without torch or diffusers:
#                                                 `gouache web` (and db, credits) behind your proxy
# torch is not in the lock: --build-arg TORCH="torch==2.5.1" (any torch>=2.4) picks the build for
# your GPUs (PyPI's Linux wheel carries CUDA); run GPU workers with --gpus all.
FROM node:20-bookworm-slim AS assets
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund

FROM python:3.11-slim-bookworm AS base
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 GOUACHE_DATA_DIR=/data
WORKDIR /app
RUN useradd --create-home gouache && mkdir -p /data && chown gouache /data
COPY requirements.lock pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
COPY tools ./tools

FROM base AS web
RUN pip install --constraint requirements.lock -e .
COPY migrations ./migrations
COPY templates ./templates
COPY docs/api-guide.md ./docs/api-guide.md
COPY static ./static
COPY --from=assets /src/node_modules/htmx.org/dist/htmx.min.js ./static/vendor/htmx.min.js
COPY --from=assets /src/node_modules/swagger-ui-dist/swagger-ui-bundle.js /src/node_modules/swagger-ui-dist/swagger-ui.css ./static/vendor/swagger-ui/
USER gouache
VOLUME /data
EXPOSE 8000
CMD ["gouache", "web", "--host", "0.0.0.0", "--port", "8000"]

# The default target: last in the file.
FROM base AS worker
ARG TORCH=torch==2.13.0
RUN pip install --constraint requirements.lock "${TORCH}"
RUN pip install --constraint requirements.lock -e ".[worker]"
COPY migrations ./migrations
COPY templates ./templates
COPY docs/api-guide.md ./docs/api-guide.md
COPY static ./static
COPY models ./models
COPY --from=assets /src/node_modules/htmx.org/dist/htmx.min.js ./static/vendor/htmx.min.js
COPY --from=assets /src/node_modules/swagger-ui-dist/swagger-ui-bundle.js /src/node_modules/swagger-ui-dist/swagger-ui.css ./static/vendor/swagger-ui/
USER gouache
VOLUME /data
EXPOSE 8000
CMD ["gouache", "dev", "--host", "0.0.0.0", "--port", "8000"]
