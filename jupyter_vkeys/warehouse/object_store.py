"""The warehouse on S3-compatible object storage, shared by every replica.

With ``c.VKeysGateway.warehouse_url = "s3://bucket/prefix"`` each replica still
journals and converts to Parquet on its own disk (the journal is what makes a call
durable before its response ends), and its writer process (:mod:`.writer`) then
copies each new Parquet file to ``<prefix>/<dataset>/date=<day>/<replica>-<file>``:
the same hive layout as on disk, one writer per object name, so replicas never
overwrite each other and no lock is needed. An object appears whole or not at all
(one PUT), so readers never see half a file. Local compaction is off with a bucket
(merged files would repeat rows already uploaded); local files stay until retention.

Readers (:mod:`.readers`) take the ``s3://`` URL where they take a data directory.
The endpoint of an S3-compatible server (MinIO, Ceph, moto) comes from
``AWS_ENDPOINT_URL`` (or ``VKEYS_S3_ENDPOINT``), credentials and region from the
usual ``AWS_*`` variables; pyarrow's filesystem layer does the I/O.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["is_object_url", "filesystem", "upload_new", "list_parquet"]

log = logging.getLogger("jupyter_vkeys.warehouse")

MANIFEST = "uploaded.txt"  # local Parquet files already copied (relative paths)
DATASETS = ("events", "audit")


def is_object_url(location: object) -> bool:
    """Whether ``location`` names a bucket rather than a directory."""
    return isinstance(location, str) and location.startswith("s3://")


def filesystem(url: str):
    """``(pyarrow S3FileSystem, "bucket/prefix")`` for an ``s3://bucket/prefix`` URL."""
    from pyarrow import fs

    endpoint = os.environ.get("VKEYS_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
    options: dict = {}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        options.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    return fs.S3FileSystem(**options), url[len("s3://"):].rstrip("/")


def upload_new(root: Path, url: str, replica: str) -> int:
    """Copy every local Parquet file not yet copied; called by the writer after each
    conversion round and before it exits. A failed copy is retried next round (the
    manifest only lists files whose PUT succeeded). Returns how many were copied."""
    manifest = root / MANIFEST
    done = set(manifest.read_text().split()) if manifest.exists() else set()
    pending = [p for dataset in DATASETS for p in sorted((root / dataset).glob("date=*/*.parquet"))
               if str(p.relative_to(root)) not in done]
    if not pending:
        return 0
    s3, base = filesystem(url)
    copied = 0
    with open(manifest, "a") as listing:
        for path in pending:
            relative = path.relative_to(root)
            target = f"{base}/{relative.parent}/{replica}-{path.name}"
            try:
                with open(path, "rb") as source, s3.open_output_stream(target) as out:
                    while chunk := source.read(1 << 20):
                        out.write(chunk)
            except FileNotFoundError:
                continue  # removed by retention meanwhile
            except OSError as exc:
                log.warning("cannot copy %s to %s: %s; retrying later", relative, url, exc)
                break
            listing.write(f"{relative}\n")
            listing.flush()
            copied += 1
    return copied


def list_parquet(url: str, dataset: str) -> tuple[object, list[str]]:
    """``(filesystem, object paths)`` of a dataset's Parquet files in the bucket."""
    from pyarrow import fs

    s3, base = filesystem(url)
    selector = fs.FileSelector(f"{base}/{dataset}", recursive=True, allow_not_found=True)
    paths = sorted(info.path for info in s3.get_file_info(selector)
                   if info.type == fs.FileType.File and info.path.endswith(".parquet"))
    return s3, paths
