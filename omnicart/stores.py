"""The production profile's servers as each client wants them: Feast's Redis connection string, and the PostgreSQL
schemas that keep Airflow, MLflow and Feast apart in one database."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal
from urllib.parse import unquote, urlsplit

from omnicart.settings import Settings

STORES: tuple[Literal["airflow", "mlflow", "feast"], ...] = ("airflow", "mlflow", "feast")
"""One PostgreSQL schema each, named after the store (``Settings.postgres_store_url``)."""


def redis_connection_string(url: str) -> str:
    """``redis://[user:password@]host:port[/db]`` (or ``rediss://``) as Feast's Redis online store reads it:
    ``host:port,db=N[,username=..][,password=..][,ssl=true]``. Feast splits on commas: a password may not hold one."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(
            f"OMNICART_REDIS_URL must look like redis://[:password@]host:port[/db], not {parts.scheme}://…"
        )
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise ValueError(f"OMNICART_REDIS_URL: the database must be a number, not {db!r}")
    fields = [f"{parts.hostname}:{parts.port or 6379}", f"db={db}"]
    if parts.username:
        fields.append(f"username={unquote(parts.username)}")
    if parts.password:
        password = unquote(parts.password)
        if "," in password:
            raise ValueError("OMNICART_REDIS_URL: Feast cannot pass a Redis password holding a comma")
        fields.append(f"password={password}")
    if parts.scheme == "rediss":
        fields.append("ssl=true")
    return ",".join(fields)


def ensure_postgres_schemas(settings: Settings) -> None:
    """Create the stores' schemas on ``postgres_url`` if missing (idempotent; needs CREATE on the database once).
    Raises RuntimeError naming the server when it cannot be reached."""
    _ensure(settings.postgres_store_url("feast"))


@lru_cache(maxsize=4)
def _ensure(url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            for store in STORES:
                conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{store}"'))
    except sa.exc.OperationalError as error:
        where = sa.engine.make_url(url).render_as_string(hide_password=True)
        raise RuntimeError(f"PostgreSQL at {where} (OMNICART_POSTGRES_URL) cannot be reached: {error.orig}") from error
    finally:
        engine.dispose()
