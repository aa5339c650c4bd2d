"""The `fastclip` command: export a model, embed files or texts, show what a model folder holds.

One module per subcommand, each with `add_parser(sub)` and the command itself; this module assembles them.

Exit codes: 0 success, 1 something failed (an image, the model, the export), 2 usage error, 130 interrupted,
141 the reader of stdout went away (`fastclip search ... | head -1`): the command stops without a word, and
reports what a shell reports for `cat` or `grep` killed by SIGPIPE there (128 + 13), so a pipeline's status
is head's as usual and `set -o pipefail` sees the same as for those tools.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import evaluate, export, info, inputs, models, search, serve
from .common import UsageError

DESCRIPTION = """\
fastclip: CLIP image and text embeddings on onnxruntime, no PyTorch needed.

  fastclip embed photos/ --out vectors.npy        embed every image under photos/
  fastclip embed --text "a dog" --out t.jsonl     embed texts instead
  fastclip export openai/clip-vit-base-patch32 models/clip-b32
                                                  turn a CLIP model into ONNX (the export extra)
  fastclip info models/clip-b32                   dims, precisions and verification figures
  fastclip models --family siglip2                published models known by name (--model NAME)
  fastclip search vectors.npy --text "a dog"      nearest images to a text (or --image PATH)
  fastclip eval retrieval captions.csv --model M  Recall@K, mAP, nDCG@K: text->image, image->text

Vectors are L2-normalized: the dot product of two of them is their cosine similarity.
Run `fastclip COMMAND --help` for each command's options.
"""


def main(argv: list[str] | None = None) -> int:
    try:
        return _run(argv)
    except BrokenPipeError:
        # Point stdout at /dev/null: what is still buffered is dropped there by the interpreter's last flush,
        # which would otherwise fail again on the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141


def _run(argv: list[str] | None) -> int:
    from ..errors import FastClipError

    try:
        parser = build_parser()
    except FastClipError as exc:  # serve's options come from the runtime: a broken onnxruntime shows here
        print(f"fastclip: error: {exc}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)  # argparse's own --help and errors already ignore a closed pipe
    # Our own progress lines and summaries at INFO (-q drops them); other libraries' INFO chatter
    # (open_clip's model loading, onnxruntime's quantizer, one line per tensor) stays hidden.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("fastclip").setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        code = args.func(args)
        sys.stdout.flush()
        return code
    except UsageError as exc:
        args.usage.print_usage(sys.stderr)  # the subcommand's usage, as argparse gives for its own errors
        print(f"{args.usage.prog}: error: {exc}", file=sys.stderr)
        return 2
    except FastClipError as exc:
        print(f"fastclip: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fastclip: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastclip", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    inputs.add_parser(sub, func=_embed)
    for command in (export, info, models, evaluate, search, serve):
        command.add_parser(sub)
    _every_subcommand(parser)
    return parser


def _embed(args) -> int:
    """`fastclip embed`: the engine's module runs it (each imports only the shared cli.inputs)."""
    if args.engine == "ray":
        from .embed_ray import run
    else:
        from .embed import run
    return run(args)


def _every_subcommand(parser: argparse.ArgumentParser) -> None:
    """At every level of subcommands: accept -q after the subcommand too (`fastclip embed ... -q`), and
    record the parser whose usage a UsageError prints (`args.usage`: the innermost subcommand given).

    -q's default is SUPPRESS: a subcommand that is not given -q must leave the value the top level set.
    `usage` relies on the opposite: argparse writes a subparser's defaults over the namespace it was
    handed, so the innermost subcommand's parser is the one left.
    """
    parser.set_defaults(usage=parser)
    for action in parser._actions:  # argparse has no public walk over subparsers
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                if "-q" not in child._option_string_actions:
                    child.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                                       help="only warnings and errors on stderr")
                _every_subcommand(child)


__all__ = ["main", "build_parser", "UsageError"]
