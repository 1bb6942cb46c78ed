"""Downloads of public data sets: streamed to disk, resumed after an interruption, and checked
against the size the server announced, so that a cut connection never leaves a file that
looks complete."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from tissuekd.errors import DownloadError
from tissuekd.logs import log_progress

log = logging.getLogger(__name__)
CHUNK = 8 << 20  # bytes read and written at a time: memory stays flat for a 40 GB bundle
TIMEOUT_S = 60  # per read; a stalled server fails the job (and Snakemake's retry resumes it)


def partial_path(dest: str | Path) -> Path:
    """Where a download in progress lives: kept when cut off, so the next try resumes it."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def download(url: str, dest: str | Path, md5: str | None = None) -> Path:
    """Fetch `url` to `dest`; bytes already in `dest`'s .part file are kept where they came from
    this URL and the server serves ranges of the same file (If-Range: a file changed on the server
    is fetched anew, never spliced). The file appears at `dest` only once every announced byte has
    arrived (and, given `md5`, its checksum matches: else the .part is removed, so a retry starts anew)."""
    dest, part = Path(dest), partial_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    kept = _kept_part(url, part)
    have = part.stat().st_size if kept else 0
    headers = {}
    if have:
        headers["Range"] = f"bytes={have}-"
        if kept.get("validator"):
            headers["If-Range"] = kept["validator"]
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have and kept.get("total") == have:  # the range starts at the end: the .part is whole
            return _finish(url, part, dest, have, have, md5)
        if err.code == 416 and have:  # not this file's end: start again
            _discard(part)
            return download(url, dest, md5)
        raise request_failed(url, err) from None
    except OSError as err:
        raise request_failed(url, err) from None
    with response:
        resumed = have and getattr(response, "status", 200) == 206
        if have and not resumed:
            log.info("%s: the server sends the whole file (no resuming, or it changed); starting again", url)
            have = 0
        total = _announced(response, have)
        validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
        _source(part).write_text(json.dumps({"url": url, "validator": validator, "total": total}))
        log.info("%s -> %s: %s%s", url, dest, _size(total), f", resuming at {_size(have)}" if have else "")
        with open(part, "ab" if resumed else "wb") as out:
            got = have
            for chunk in _chunks(response):
                out.write(chunk)
                got += len(chunk)
                if total:
                    log_progress(log, dest.name, got, total, step=len(chunk))
    return _finish(url, part, dest, got, total, md5)


def request_failed(url: str, err: OSError) -> DownloadError:
    """The one line of a request answered with an HTTP error, or not answered."""
    if isinstance(err, urllib.error.HTTPError):
        return DownloadError(url, f"the server answered HTTP {err.code} ({err.reason})")
    hint = "" if url.startswith("file:") else "; does this host have internet access?"
    return DownloadError(url, f"cannot be reached ({getattr(err, 'reason', err)}){hint}")


def _source(part: Path) -> Path:
    """Beside a .part: the URL, validator (ETag or Last-Modified) and size its bytes came from."""
    return part.with_name(part.name + ".json")


def _kept_part(url: str, part: Path) -> dict | None:
    """The .part's source where it holds bytes of `url`; a .part of another URL (the list's row
    changed) or of unknown origin is discarded."""
    if not part.exists():
        _discard(part)
        return None
    try:
        source = json.loads(_source(part).read_text())
    except (OSError, ValueError):
        source = {}
    if source.get("url") != url:
        log.info("%s: not a download of %s; starting again", part, url)
        _discard(part)
        return None
    return source


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    _source(part).unlink(missing_ok=True)


def _chunks(response):
    """The body in chunks until it ends or the connection drops (what came before is kept)."""
    while True:
        try:
            chunk = response.read(CHUNK)
        except http.client.IncompleteRead as err:
            yield err.partial
            return
        except OSError as err:  # reset, timed out: _finish says how far it got
            log.warning("the connection dropped: %s", err)
            return
        if not chunk:
            return
        yield chunk


def _announced(response, have: int) -> int | None:
    """The whole file's size from Content-Range (a resumed reply) or Content-Length; None if neither."""
    span = response.headers.get("Content-Range", "")
    if "/" in span and span.rsplit("/", 1)[1].isdigit():
        return int(span.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return have + int(length) if length and length.isdigit() else None


def _finish(url: str, part: Path, dest: Path, got: int, total: int | None, md5: str | None) -> Path:
    if total is not None and got != total:
        raise DownloadError(url, f"the download stopped at {_size(got)} of {_size(total)}; run again to resume it "
                              f"({part} is kept)")
    if md5 and (found := file_md5(part)) != md5.lower():
        _discard(part)
        raise DownloadError(url, f"the download's MD5 is {found}, not the {md5} published for it (removed)")
    os.replace(part, dest)
    _source(part).unlink(missing_ok=True)
    return dest


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _size(n: int | None) -> str:
    return "size unknown" if n is None else f"{n / 2**20:,.1f} MiB"
