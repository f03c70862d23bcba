"""A real S3 server on loopback (moto's standalone server, in a thread) and a way to put a registry in it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Dummy credentials: moto accepts any, s3fs needs some.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def s3_server() -> Iterator[str]:
    """Start moto's S3 server on 127.0.0.1 and a free port; yield its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def filesystem(endpoint: str):
    import s3fs

    return s3fs.S3FileSystem(key=CREDENTIALS["AWS_ACCESS_KEY_ID"], secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                             endpoint_url=endpoint, skip_instance_cache=True, use_listings_cache=False)


def upload(endpoint: str, local_registry: Path, uri: str) -> str:
    """Put every file of a local registry folder under ``uri`` (s3://bucket/prefix), creating the bucket."""
    fs = filesystem(endpoint)
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    for path in sorted(Path(local_registry).rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{bucket}/{prefix}/{path.relative_to(local_registry).as_posix()}")
    return uri
