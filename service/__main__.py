"""`python -m service`: serve with uvicorn on FACES_HOST:FACES_PORT (default 0.0.0.0:8000)."""

from __future__ import annotations

import sys

import uvicorn
from pydantic import ValidationError

from service.config import Settings


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"FACES_{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        print(f"error: invalid settings: {problems}", file=sys.stderr)
        return 2
    uvicorn.run(
        "service.main:app",
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.graceful_timeout or None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
