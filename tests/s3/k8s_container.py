#!/usr/bin/env python3
"""Prints, as JSON, what a pod of a Kubernetes Job manifest would run: the first container's
command, args and literal env ({"command": [...], "args": [...], "env": {NAME: value}}) and the
Job's completions, for tests/scale_out.rs, which runs it as each index of an Indexed Job would.

Usage: k8s_container.py MANIFEST.yaml   (needs PyYAML: the venv of scripts/test-s3.sh has it)
"""

import json
import sys

import yaml


def main():
    with open(sys.argv[1]) as f:
        job = yaml.safe_load(f)
    if job.get("kind") != "Job":
        print(f"{sys.argv[1]}: not a Job (kind {job.get('kind')!r})", file=sys.stderr)
        return 1
    spec = job["spec"]
    container = spec["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    print(
        json.dumps(
            {
                "completion_mode": spec.get("completionMode"),
                "completions": spec.get("completions"),
                "command": container.get("command", []),
                "args": container.get("args", []),
                "env": env,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
