# The runstream server image: API, workers and CLI (used by docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY sdk sdk
COPY streams streams
COPY storage storage
COPY api api
RUN pip install --no-cache-dir '.[server]' && useradd --create-home runstream && mkdir /data && chown runstream /data
USER runstream
WORKDIR /data
EXPOSE 8080
CMD ["runstream", "api", "--host", "0.0.0.0"]
