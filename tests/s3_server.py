"""pytest plugin: a local S3 server (moto in server mode) speaking real HTTP on loopback.

- ``s3_server`` (session): the running server; ``s3_server.client()`` makes a boto3 client for it.
- ``s3_bucket`` (function): the name of a fresh, empty bucket, emptied and removed afterwards.

Clients get dummy credentials explicitly, so tests never depend on (or leak) the caller's.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

REGION = "us-east-1"
#: Dummy credentials for the local server only.
ACCESS_KEY = "testing"
SECRET_KEY = "testing"


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    region: str = REGION

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    access_log = logging.getLogger("werkzeug")
    level = access_log.level
    access_log.setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(endpoint_url=f"http://{host}:{port}")
    finally:
        server.stop()
        access_log.setLevel(level)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    client = s3_server.client()
    name = f"test-{secrets.token_hex(6)}"
    client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        _remove_bucket(client, name)


def _remove_bucket(client: Any, name: str) -> None:
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=name):
        for upload in page.get("Uploads", []):
            client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
    client.delete_bucket(Bucket=name)
