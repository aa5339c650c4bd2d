"""`fastclip models`: the catalog of models known by name, as a table or as JSON."""

from __future__ import annotations

import json

from .common import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list the published models fastclip knows by name (the catalog)",
                       description="List the catalog: published CLIP-family ONNX models that every --model (and "
                                   "ImageEmbedding, TextEmbedding, CLIP) takes by name or alias. Folders and other "
                                   "hub repos in a known layout load too; they are not listed.")
    p.add_argument("--family", metavar="FAMILY", help="only this family (clip, siglip, siglip2, xlm-roberta-clip, "
                                                     "nllb-siglip, m-clip)")
    p.add_argument("--layout", metavar="LAYOUT", help="only this published layout (fastembed, transformers.js, immich)")
    p.add_argument("--multilingual", action="store_true", help="only models trained for many languages")
    p.add_argument("--json", action="store_true", help="the entries as one JSON list, every field (for scripts)")
    p.set_defaults(func=cmd_models)


def _pick(value: str | None, choices: list[str], option: str) -> str | None:
    if value is None or value in choices:
        return value
    raise UsageError(f"{option} {value!r}: not one of {', '.join(choices)}")


def selected(args) -> list[dict]:
    """The catalog entries the filters keep, in catalog order."""
    from ..layouts import catalog

    rows = catalog.list_supported_models()
    family = _pick(args.family, sorted({m["family"] for m in rows}), "--family")
    layout = _pick(args.layout, sorted({m["layout"] for m in rows}), "--layout")
    return [m for m in rows if (family is None or m["family"] == family) and (layout is None or m["layout"] == layout)
            and (not args.multilingual or m["multilingual"])]


def _size(m: dict) -> str:
    """Both towers' fp32 files, in MB, where the catalog knows them."""
    sizes = [m["size_mb"][t].get("fp32") for t in ("vision", "text")]
    return "?" if None in sizes else f"{sum(sizes):,.0f}"


def table(rows: list[dict]) -> list[str]:
    """One line per model: what picking it means (dims, input sizes, scoring), then its other names."""
    cols = [("NAME", lambda m: m["name"]), ("DIM", lambda m: str(m["embed_dim"])),
            ("IMAGE", lambda m: str(m["image_size"])), ("CTX", lambda m: str(m["context_length"])),
            ("FAMILY", lambda m: m["family"]), ("LAYOUT", lambda m: m["layout"]),
            ("SCORING", lambda m: m["scoring"]["kind"]), ("LANG", lambda m: "multi" if m["multilingual"] else "en"),
            ("MB", _size),
            # an Immich repo's own name (without immich-app/) also works; it is left out here as it adds nothing
            ("ALSO", lambda m: ", ".join(a for a in m["aliases"] if a != m["name"].split("/")[-1]))]
    cells = [[f(m) for _, f in cols] for m in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, (h, _) in enumerate(cols)]
    right = {"DIM", "IMAGE", "CTX", "MB"}

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if h in right else v.ljust(w) for (h, _), v, w in zip(cols, values, widths)).rstrip()

    return [line([h for h, _ in cols])] + [line(r) for r in cells]


def cmd_models(args) -> int:
    rows = selected(args)
    if args.json:
        print(json.dumps(rows, indent=1, ensure_ascii=False))
        return 0
    print(f"{len(rows)} models by name: pass a NAME (or a name under ALSO) as --model, or to ImageEmbedding, "
          "TextEmbedding, CLIP. MB: fp32 files of both towers; CTX: text tokens; `--json` for every field.")
    for text in table(rows):
        print(text)
    return 0
