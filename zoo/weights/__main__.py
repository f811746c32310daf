"""Command line for the weight catalog and cache: ``python -m zoo.weights list|info|download|verify [pattern]``.

    python -m zoo.weights list 'swin*'        # key, layout, top-1, cached?
    python -m zoo.weights info resnet50       # every field of the default entry (or of arch.tag)
    python -m zoo.weights download resnet50   # fetch into the cache (ZOO_HOME), checking sha256
    python -m zoo.weights verify              # re-hash every cached file; exit 1 on a mismatch or
                                              # a file that is no readable checkpoint
"""
from __future__ import annotations

import argparse
import sys

from .catalog import catalog, list_pretrained, pretrained_cfg
from .download import DownloadError, cache_dir, cache_path, download, find_cached, verify_cache


def _cmd_list(pattern: str) -> int:
    names = list_pretrained(pattern)
    width = max((len(n) for n in names), default=10)
    print(f"{'name':<{width}}  {'layout':<11} {'top1':>6}  {'input':>7}  cached")
    for n in names:
        c = catalog()[n]
        top1 = f"{c.top1:.2f}" if c.top1 is not None else "-"
        cached = "yes" if find_cached(c.url) is not None else "-"
        default = " (default)" if c.is_default else ""
        print(f"{n:<{width}}  {c.layout:<11} {top1:>6}  {c.input_size[1]:>3}x{c.input_size[2]:<3}  {cached}{default}")
    print(f"{len(names)} entries; cache {cache_dir()}", file=sys.stderr)
    return 0


def _cmd_info(pattern: str) -> int:
    cfg = pretrained_cfg(pattern)
    names = [cfg.name] if cfg else list_pretrained(pattern)
    if not names:
        print(f"No catalog entry matches {pattern!r}.", file=sys.stderr)
        return 1
    for n in names:
        c = catalog()[n]
        print(f"{n}:")
        for k, v in c.to_dict().items():
            if k not in ("name",) and v is not None:
                print(f"  {k}: {v}")
        found = find_cached(c.url)
        print(f"  cache_path: {found if found is not None else str(cache_path(c.url)) + ' (not downloaded)'}")
    return 0


def _cmd_download(pattern: str) -> int:
    names = list_pretrained(pattern)
    if not names:
        print(f"No catalog entry matches {pattern!r}.", file=sys.stderr)
        return 1
    failed = 0
    for n in names:
        c = catalog()[n]
        try:
            print(f"{n}: {download(c.url, sha256=c.sha256)}")
        except DownloadError as e:
            failed += 1
            print(f"{n}: FAILED: {e}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_verify(pattern: str) -> int:
    known = {str(cache_path(catalog()[n].url)): catalog()[n].sha256 for n in list_pretrained(pattern)}
    results = verify_cache(known=known)
    if pattern != "*":
        results = [r for r in results if str(r[0]) in known]
    count = {"mismatch": 0, "unreadable": 0}
    for path, status, detail in results:
        failed = status in count
        count[status] = count.get(status, 0) + 1
        print(f"{status:<10} {path}" + (f"\n           {detail}" if failed else ""))
    print(f"{len(results)} files checked in {cache_dir()}, {count['mismatch']} mismatched, "
          f"{count['unreadable']} unreadable", file=sys.stderr)
    return 1 if count["mismatch"] or count["unreadable"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.weights", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("list", "info", "download", "verify"))
    parser.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern over arch.tag or arch (default: all)")
    args = parser.parse_args(argv)
    if args.command == "info" and args.pattern == "*":
        parser.error("info needs a model name or arch.tag")
    return {"list": _cmd_list, "info": _cmd_info, "download": _cmd_download, "verify": _cmd_verify}[args.command](args.pattern)


if __name__ == "__main__":
    sys.exit(main())
