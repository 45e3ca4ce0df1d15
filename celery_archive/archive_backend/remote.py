"""A remote archive read on a client's request path must fail fast: an S3 sink gets a client
of its own with short timeouts and few attempts (``archive_timeout``), so an endpoint that
hangs costs a read of a PENDING id seconds, not botocore's minutes."""

from __future__ import annotations

from typing import Any


def fail_fast(sink: Any, timeout: float) -> Any:
    """``sink`` with its S3 client replaced by one to the same endpoint and region that gives up
    after ``timeout`` seconds to connect or to read, with two attempts in all; another sink as it is."""
    client = getattr(sink, "client", None)
    if client is None or not hasattr(client, "meta") or not hasattr(sink, "bucket"):
        return sink
    import boto3
    from botocore.config import Config

    config = client.meta.config.merge(Config(connect_timeout=timeout, read_timeout=timeout,
                                             retries={"mode": "standard", "total_max_attempts": 2}))
    sink.client = boto3.session.Session().client("s3", endpoint_url=client.meta.endpoint_url,
                                                 region_name=client.meta.region_name, config=config)
    return sink
