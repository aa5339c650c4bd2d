"""`fastclip search`: the nearest rows of an embeddings file to a text or an image, with an optional HTML page."""

from __future__ import annotations

import argparse
import base64
import html
import io
import os
from pathlib import Path

from .common import UsageError, note

THUMBNAIL = 256  # px, longest side of the thumbnails inlined in the HTML page


def add_parser(sub) -> None:
    p = sub.add_parser(
        "search",
        help="find the rows of an embeddings file nearest to a text or an image",
        description="Exact top-k search over a file `fastclip embed` wrote (.npy + side file, .parquet, .jsonl): "
        "text -> image, image -> image, and image -> text (or text -> text) when the file holds text vectors. "
        "The query is embedded with the model that made the file (or --model, which must have the same weights "
        "for the file's tower: checked by fingerprint).",
        epilog="Examples:\n  fastclip search vectors.npy --text \"a dog on a beach\" -k 5\n"
        "  fastclip search vectors.npy --image query.jpg --html results.html",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("embeddings", metavar="EMBEDDINGS", help="file written by fastclip embed")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", metavar="TEXT", help="search with this text")
    q.add_argument("--image", metavar="PATH", help="search with this image")
    p.add_argument("-k", type=int, default=10, metavar="K", help="how many results (default 10)")
    p.add_argument("--model", metavar="MODEL", help="model for the query (default: the one recorded in the file)")
    p.add_argument("--html", metavar="FILE.html", help="also write a self-contained page with thumbnails and scores")
    p.add_argument("--threads", type=int, metavar="N", help="onnxruntime threads (default: all cores)")
    p.add_argument("--cache-dir", metavar="DIR", help="hub cache folder")
    p.add_argument("--offline", action="store_true", help="use only models already cached")
    p.set_defaults(func=cmd_search)


def cmd_search(args) -> int:
    from ..retrieval import search
    from ..sinks import read_embeddings

    if args.k < 1:
        raise UsageError("-k must be at least 1")
    if not os.path.exists(args.embeddings):
        raise UsageError(f"{args.embeddings}: no such file or folder")
    found = read_embeddings(args.embeddings)
    if found.meta["rows"] == 0 or len(found.items) == 0:
        raise UsageError(f"{args.embeddings}: holds no vectors")
    query_kind = "text" if args.text is not None else "image"
    model = query_model(found.meta, query_kind, args)
    if query_kind == "text":
        vector = next(iter(model.embed([args.text])))
    else:
        vector = next(iter(model.embed([args.image])))
    indices, scores = search(vector, found.vectors, args.k, threads=args.threads)
    direction = f"{query_kind} -> {found.kind}"
    query = args.text if args.text is not None else args.image
    print(f"{direction}: {len(found.items)} {found.kind}s in {args.embeddings}; query {query!r}")
    width = len(str(len(indices)))
    for rank, (i, score) in enumerate(zip(indices, scores), 1):
        # Scores are cosines, -1.0000 to 1.0000: 7 characters with the sign, so the items start in one column.
        print(f"{rank:>{width}}  {score:7.4f}  {_printable(found.items[i])}")
    if args.html:
        write_html(Path(args.html), query_kind, query, found.kind, [(found.items[i], float(s)) for i, s in
                                                                    zip(indices, scores)], args.embeddings, found.meta)
        note(f"fastclip: page -> {args.html}")
    return 0


def _printable(item: str) -> str:
    """One result per line, printable on any terminal: a text's newlines are shown escaped, and a path
    whose bytes are not UTF-8 (carried as surrogateescape, see fastclip.sinks) shows them as \\xNN."""
    if any(c in item for c in "\r\n\t"):
        item = item.encode("unicode_escape", "surrogateescape").decode("ascii", "backslashreplace")
    return item.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def query_model(meta: dict, query_kind: str, args):
    """The embedding class for the query, after checking its weights are the ones that made the file."""
    from ..embedding import ImageEmbedding, TextEmbedding
    from ..errors import ModelError
    from ..hashing import tower_fingerprint
    from ..model import load_manifest, resolve_folder

    recorded = meta.get("model")
    if not (args.model or recorded):
        raise UsageError(f"{args.embeddings}: the file records no model: give --model")
    name = args.model or beside(recorded, args.embeddings, os.path.isdir)
    hub = {"cache_dir": args.cache_dir, "local_files_only": args.offline}
    file_tower = "vision" if meta["kind"] == "image" else "text"
    query_tower = "vision" if query_kind == "image" else "text"

    def tower(model_name: str, which: str):
        # a catalog model published as one repo per tower (fastembed's CLIP): the repo holding `which`
        folder = resolve_folder(model_name, tower=which, **hub)
        spec = getattr(load_manifest(folder), which)
        if spec is None:
            raise ModelError(f"{model_name} has no {which} tower (needed for "
                             f"{'the query' if which == query_tower else 'checking the file'}): give --model with both towers")
        return model_name, folder, spec

    try:
        _, check_folder, check_spec = tower(name, file_tower)
    except ModelError as exc:
        if args.model:
            raise
        kind = "model folder" if os.path.isabs(recorded) else "model (a hub repo, or a folder relative to where it ran)"
        raise ModelError(f"{args.embeddings} records the {kind} {recorded!r}, which cannot be opened here "
                         f"({exc}); give --model with the same weights (checked by fingerprint)") from None
    fingerprint = tower_fingerprint(check_folder, check_spec)
    if meta.get("fingerprint") and fingerprint != meta["fingerprint"]:
        raise ModelError(
            f"{args.embeddings} was made by {recorded} ({file_tower} tower fingerprint {meta['fingerprint'][:12]}), "
            f"but the query model {name} has other {file_tower} weights (fingerprint {fingerprint[:12]}): vectors "
            f"of different models cannot be compared. Search with --model {recorded}, or embed again with {name}"
        )
    query_name, _, spec = tower(name, query_tower)
    common = dict(threads=args.threads, **hub)
    if meta.get("precision") in spec.files:
        common["precision"] = meta["precision"]  # query with the variant that made the file
    if query_kind == "image":
        options = meta.get("options") or {}
        return ImageEmbedding(query_name, exif_transpose=options.get("exif_transpose", True), **common)
    return TextEmbedding(query_name, **common)


def beside(item: str, embeddings: str, exists) -> str:
    """`item` as recorded, or, for a relative name that `exists` does not find from here, the same name
    under the embeddings file's folder (files from before paths were recorded absolute)."""
    if os.path.isabs(item) or exists(item):
        return item
    near = os.path.join(os.path.dirname(os.path.abspath(embeddings)), item)
    return near if exists(near) else item


def _thumbnail(path: str) -> str | None:
    """The image as a base64 JPEG data URI, at most THUMBNAIL px; None when it cannot be read.

    Transparent pixels are shown on white, as a browser shows the image itself on a white page: JPEG has
    no alpha, and dropping it (convert("RGB")) shows the colour stored under it, black in most files. (The
    model is fed what open_clip feeds it, alpha dropped; the page is for people.)
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
                im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA"))
            im.thumbnail((THUMBNAIL, THUMBNAIL))
            buf = io.BytesIO()
            im.convert("RGB").save(buf, "JPEG", quality=85)
    except Exception:  # noqa: BLE001  (a missing or broken image still gets its row on the page)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(kind: str, item: str, source: str = "") -> str:
    shown = html.escape(_printable(item))
    if kind == "text":
        return f'<div class="text">{shown}</div>'
    uri = _thumbnail(beside(item, source, os.path.exists) if source else item)
    img = f'<img src="{uri}" alt="{shown}">' if uri else '<div class="missing">image not readable</div>'
    return img + f'<div class="path">{shown}</div>'


def write_html(out: Path, query_kind: str, query: str, kind: str, results: list[tuple[str, float]],
               source: str, meta: dict) -> None:
    """A self-contained page: the query, then each result's rank, score and thumbnail (or text)."""
    cards = "\n".join(
        f'<figure class="result"><div class="rank">#{rank}</div><div class="score">{score:.4f}</div>'
        f"{_figure(kind, item, source)}</figure>"
        for rank, (item, score) in enumerate(results, 1)
    )
    title = f"fastclip search: {query_kind} -> {kind}"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; background: #fafafa; color: #222; }}
.query {{ display: flex; gap: 16px; align-items: center; margin-bottom: 20px; }}
.query img {{ max-width: {THUMBNAIL}px; max-height: {THUMBNAIL}px; border: 2px solid #333; }}
.results {{ display: flex; flex-wrap: wrap; gap: 14px; }}
.result {{ margin: 0; width: {THUMBNAIL}px; background: #fff; border: 1px solid #ddd; padding: 8px; }}
.result img {{ max-width: 100%; display: block; margin: 4px auto; }}
.rank {{ font-weight: bold; display: inline; }} .score {{ display: inline; float: right; color: #555; }}
.path, .meta {{ font-size: 12px; color: #666; word-break: break-all; }}
.text {{ margin-top: 6px; }} .missing {{ color: #a00; padding: 20px 0; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<div class="query"><strong>Query:</strong> {_figure(query_kind, query) if query_kind == "image" else
    '<span class="text">' + html.escape(_printable(query)) + '</span>'}</div>
<p class="meta">{len(results)} best of {meta.get("rows")} {html.escape(kind)} vectors in {html.escape(str(source))}
(model {html.escape(str(meta.get("model")))}, {html.escape(str(meta.get("precision")))}); score = cosine similarity.</p>
<div class="results">
{cards}
</div></body></html>
"""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")


__all__ = ["add_parser", "cmd_search", "write_html"]
