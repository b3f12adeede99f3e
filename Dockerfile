# The planshift image used by docker-compose.yml: the package and its console script.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY planshift ./planshift
COPY cli ./cli
COPY consumers ./consumers
COPY producers ./producers
COPY jobs ./jobs
COPY schemas ./schemas
RUN pip install --no-cache-dir .
ENV PLANSHIFT_DATA_DIR=/var/lib/planshift
# /metrics, /healthz and /readyz of every long-running process (docs/RUNBOOK.md)
ENV PLANSHIFT_METRICS_PORT=9400
EXPOSE 9400
VOLUME /var/lib/planshift
ENTRYPOINT ["planshift"]
CMD ["--help"]
