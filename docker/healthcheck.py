"""Container health check: exit 0 when the service's /readyz answers 200, else 1 with the reason.

Docker keeps the printed reason in `docker inspect --format '{{json .State.Health}}' CONTAINER`.
Sends the first of FACES_API_KEYS, for when FACES_AUTH_PROBES protects the probes.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('FACES_PORT', '8000')}/readyz"
    request = urllib.request.Request(url)
    keys = [k.strip() for k in os.environ.get("FACES_API_KEYS", "").split(",") if k.strip()]
    if keys:
        request.add_header("X-API-Key", keys[0])
    try:
        with urllib.request.urlopen(request, timeout=4) as response:
            print(f"{url}: {response.status}")
            return 0
    except urllib.error.HTTPError as exc:  # 503 while loading or shutting down
        print(f"{url}: {exc.code} {exc.read(200).decode(errors='replace')}")
    except OSError as exc:  # refused: not listening (yet), or the process is gone
        print(f"{url}: {exc}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
