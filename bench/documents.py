#!/usr/bin/env python3
"""Writes the upstream tree the benchmark's nginx serves as the index
documents' origin: a PyPI simple page of 300 files, an npm packument of 400
versions, a Helm index.yaml of 1500 chart versions, an RPM repomd.xml and an
Alpine APKINDEX.tar.gz. Documents are generated, deterministic and shaped
like the real ones (the sizes match what the registries publish for busy
projects).

    bench/documents.py DIR BASE_URL
"""

import hashlib
import io
import json
import os
import sys
import tarfile


def digest(text):
    return hashlib.sha256(text.encode()).hexdigest()


def pypi(root, base):
    lines = [
        "<!DOCTYPE html>",
        "<html><head><meta name=\"pypi:repository-version\" content=\"1.1\">",
        "<title>Links for demo</title></head><body><h1>Links for demo</h1>",
    ]
    for i in range(300):
        major, minor, patch = i // 100, (i // 10) % 10, i % 10
        version = f"{major}.{minor}.{patch}"
        kind = ("demo-%s-py3-none-any.whl" if i % 2 else "demo-%s.tar.gz") % version
        sha = digest(kind)
        lines.append(
            f'<a href="{base}/packages/{sha[:2]}/{sha[2:4]}/{sha[4:]}/{kind}#sha256={sha}" '
            f'data-requires-python="&gt;=3.8" data-dist-info-metadata="sha256={digest(kind + "m")}">'
            f"{kind}</a><br/>"
        )
    lines.append("</body></html>")
    page = os.path.join(root, "pypi", "simple", "demo")
    os.makedirs(page, exist_ok=True)
    with open(os.path.join(page, "index.html"), "w") as f:
        f.write("\n".join(lines) + "\n")


def npm(root, base):
    versions, times = {}, {"created": "2019-01-01T00:00:00.000Z"}
    for i in range(400):
        version = f"{i // 100}.{(i // 10) % 10}.{i % 10}"
        versions[version] = {
            "name": "demo",
            "version": version,
            "description": "A demonstration package with a realistic amount of metadata",
            "main": "index.js",
            "license": "MIT",
            "keywords": ["demo", "benchmark", "metadata", "registry"],
            "repository": {"type": "git", "url": "git+https://git.example.org/demo/demo.git"},
            "author": {"name": "Demo Author", "email": "author@example.org"},
            "scripts": {"test": "node test.js", "build": "tsc -p ."},
            "dependencies": {"left-pad": "^1.3.0", "lodash": "^4.17.21", "chalk": "^4.1.2"},
            "devDependencies": {"typescript": "^5.0.0", "eslint": "^8.0.0"},
            "engines": {"node": ">=14"},
            "gitHead": digest(version)[:40],
            "_id": f"demo@{version}",
            "_nodeVersion": "18.17.0",
            "_npmVersion": "9.6.7",
            "maintainers": [{"name": "demo", "email": "author@example.org"}],
            "_npmUser": {"name": "demo", "email": "author@example.org"},
            "dist": {
                "tarball": f"{base}/demo/-/demo-{version}.tgz",
                "shasum": digest(version)[:40],
                "integrity": "sha512-" + digest(version + "i") + digest(version + "j")[:24] + "==",
                "fileCount": 12,
                "unpackedSize": 48211,
            },
        }
        times[version] = "2020-%02d-%02dT12:00:00.000Z" % (i % 12 + 1, i % 28 + 1)
    times["modified"] = "2024-01-01T00:00:00.000Z"
    packument = {
        "_id": "demo",
        "name": "demo",
        "dist-tags": {"latest": version},
        "versions": versions,
        "time": times,
        "description": "A demonstration package",
        "readme": "# demo\n\n" + "A line of the readme.\n" * 40,
        "license": "MIT",
    }
    os.makedirs(os.path.join(root, "npm"), exist_ok=True)
    with open(os.path.join(root, "npm", "demo"), "w") as f:
        json.dump(packument, f, indent=2)


def helm(root, base):
    out = ["apiVersion: v1", "entries:"]
    for chart in range(15):
        out.append(f"  chart{chart}:")
        for i in range(100):
            version = f"{i // 10}.{i % 10}.0"
            out += [
                "  - apiVersion: v2",
                f"    appVersion: {version}",
                f"    created: \"2021-{chart % 12 + 1:02d}-{i % 28 + 1:02d}T10:00:00.000000000Z\"",
                f"    description: Chart {chart}, a demonstration chart for the benchmark",
                f"    digest: {digest(f'{chart}-{version}')}",
                "    home: https://charts.example.org",
                f"    name: chart{chart}",
                "    type: application",
                "    urls:",
                f"    - charts/chart{chart}-{version}.tgz",
                f"    version: {version}",
            ]
    out.append("generated: \"2024-01-01T00:00:00.000000000Z\"")
    os.makedirs(os.path.join(root, "helm"), exist_ok=True)
    with open(os.path.join(root, "helm", "index.yaml"), "w") as f:
        f.write("\n".join(out) + "\n")


def rpm(root):
    parts = []
    for kind in ["primary", "filelists", "other", "primary_db", "filelists_db", "other_db"]:
        sha = digest(kind)
        parts.append(
            f'  <data type="{kind}">\n'
            f'    <checksum type="sha256">{sha}</checksum>\n'
            f'    <open-checksum type="sha256">{digest(kind + "o")}</open-checksum>\n'
            f'    <location href="repodata/{sha}-{kind}.xml.gz"/>\n'
            "    <timestamp>1700000000</timestamp>\n"
            "    <size>123456</size>\n"
            "    <open-size>654321</open-size>\n"
            "  </data>"
        )
    text = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<repomd xmlns="http://linux.duke.edu/metadata/repo" '
        'xmlns:rpm="http://linux.duke.edu/metadata/rpm">\n'
        "  <revision>1700000000</revision>\n" + "\n".join(parts) + "\n</repomd>\n"
    )
    os.makedirs(os.path.join(root, "rpm", "repodata"), exist_ok=True)
    with open(os.path.join(root, "rpm", "repodata", "repomd.xml"), "w") as f:
        f.write(text)


def alpine(root):
    entries = []
    for i in range(800):
        entries.append(
            f"C:Q1{digest(str(i))[:27]}=\nP:pkg{i}\nV:1.{i}.0-r0\nA:x86_64\nS:{10000 + i}\n"
            f"I:{40000 + i}\nT:Package number {i}\nU:https://pkgs.example.org\nL:MIT\n"
            f"o:pkg{i}\nm:Maintainer <m@example.org>\nt:1700000000\nD:so:libc.musl-x86_64.so.1\n"
        )
    index = "\n".join(entries).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("APKINDEX")
        info.size = len(index)
        info.mtime = 1700000000
        tar.addfile(info, io.BytesIO(index))
    os.makedirs(os.path.join(root, "alpine", "x86_64"), exist_ok=True)
    with open(os.path.join(root, "alpine", "x86_64", "APKINDEX.tar.gz"), "wb") as f:
        f.write(buf.getvalue())


def main():
    root, base = sys.argv[1], sys.argv[2].rstrip("/")
    pypi(root, base + "/pypi")
    npm(root, base + "/npm")
    helm(root, base + "/helm")
    rpm(root)
    alpine(root)


if __name__ == "__main__":
    main()
