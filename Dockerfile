# The reference service for Cloud Run: slim, non-root, listening on $PORT.
# Build from the repository root:  docker build -t users-api .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY requirements/ requirements/
COPY src/ src/
RUN python -m venv /venv \
 && /venv/bin/pip install --no-cache-dir -c requirements/dev.lock '.[service]'

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app homing \
 && mkdir -p /app /data && chown homing /data
COPY --from=build /venv /venv
COPY examples/users_api /app/users_api
WORKDIR /app
# HOST: Cloud Run sends traffic to 0.0.0.0:$PORT. DATABASE_URL: point it at PostgreSQL
# (Cloud SQL) in production; the SQLite default lives in the container and is lost with it.
ENV PATH=/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8080 \
    DATABASE_URL=sqlite+aiosqlite:////data/users_api.db
USER homing
EXPOSE 8080
# uvicorn with uvloop and httptools, no access log, graceful stop inside Cloud Run's 10 s.
CMD ["python", "-m", "users_api"]
