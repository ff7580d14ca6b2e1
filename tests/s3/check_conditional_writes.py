#!/usr/bin/env python3
"""Checks that the S3 server at $AWS_ENDPOINT_URL honours create-only writes, which isoclip's
completion records rely on: a PutObject with `If-None-Match: *` on an existing key, and a
CompleteMultipartUpload with `If-None-Match: *` on an existing key, must both be refused with
412 PreconditionFailed and leave the first object in place. Exits 1 (saying which) otherwise.

Run by scripts/test-s3.sh against the pinned moto before the tests, so a moto that stops
supporting conditional writes fails loudly instead of making the resume tests meaningless.
"""

import os
import sys
import uuid

import boto3
import botocore

BUCKET = "conditional-" + uuid.uuid4().hex[:12]


def client():
    return boto3.client(
        "s3",
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
    )


def refused(call):
    """True when call() fails with 412 PreconditionFailed."""
    try:
        call()
    except botocore.exceptions.ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    return False


def multipart(s3, key, body):
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    part = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=1, Body=body)
    return s3.complete_multipart_upload(
        Bucket=BUCKET,
        Key=key,
        UploadId=upload,
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
        IfNoneMatch="*",
    )


def main():
    s3 = client()
    s3.create_bucket(Bucket=BUCKET)
    failures = []

    s3.put_object(Bucket=BUCKET, Key="put", Body=b"first", IfNoneMatch="*")
    if not refused(lambda: s3.put_object(Bucket=BUCKET, Key="put", Body=b"second", IfNoneMatch="*")):
        failures.append("PutObject with If-None-Match: * replaced an existing object")
    if s3.get_object(Bucket=BUCKET, Key="put")["Body"].read() != b"first":
        failures.append("PutObject with If-None-Match: * changed the existing object")

    multipart(s3, "multipart", b"first")
    if not refused(lambda: multipart(s3, "multipart", b"second")):
        failures.append("CompleteMultipartUpload with If-None-Match: * replaced an existing object")
    if s3.get_object(Bucket=BUCKET, Key="multipart")["Body"].read() != b"first":
        failures.append("CompleteMultipartUpload with If-None-Match: * changed the existing object")

    for key in ("put", "multipart"):
        s3.delete_object(Bucket=BUCKET, Key=key)
    s3.delete_bucket(Bucket=BUCKET)
    if failures:
        for f in failures:
            print(f"conditional writes: {f}", file=sys.stderr)
        return 1
    print("conditional writes: PutObject and CompleteMultipartUpload honour If-None-Match: *")
    return 0


if __name__ == "__main__":
    sys.exit(main())
