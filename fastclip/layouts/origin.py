"""Which published repo a folder is a snapshot of, and the logit scales known for repos that do not ship one.

huggingface_hub caches repo ORG/NAME under `models--ORG--NAME/snapshots/REVISION/`; a folder there is that
repo's snapshot whatever name the user gave (a catalog alias, the repo id). A folder elsewhere (a copy,
`specific_model_path`) has no repo: only what its files hold counts.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["repo_of", "known_logit_scale"]

# OpenAI CLIP ViT-B/32 clamps its learned logit scale at 100 during training and ends there: exp(4.6052) of
# the released checkpoint is 100.00 (HF's openai/clip-vit-base-patch32 and open_clip's "openai" tag). These
# repos hold that model's towers but not the scale, so the one number is stated here, for them only.
_OPENAI_B32 = 100.0
KNOWN_LOGIT_SCALES = {
    "Qdrant/clip-ViT-B-32-vision": _OPENAI_B32,
    "Qdrant/clip-ViT-B-32-text": _OPENAI_B32,
    "immich-app/ViT-B-32__openai": _OPENAI_B32,
}


def repo_of(folder: Path) -> str | None:
    """"ORG/NAME" when `folder` is a hub-cache snapshot of that repo, else None."""
    parts = Path(folder).parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        org, sep, name = parts[-3][len("models--"):].partition("--")
        if sep and org and name:
            return f"{org}/{name}"
    return None


def known_logit_scale(folder: Path) -> float | None:
    """The trained logit scale of the repo `folder` is a snapshot of, where it is known and not shipped."""
    repo = repo_of(folder)
    return KNOWN_LOGIT_SCALES.get(repo) if repo else None
