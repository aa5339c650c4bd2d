"""The routes: /v1/embeddings, /v1/classify, /v1/models, /ready, /metrics (/health is in health.py).

Each one reads top-down: ready? -> body -> request -> model -> inputs -> towers -> rows in input order ->
JSON. Errors are raised, never answered here: the endpoint wrapper (app.py) turns any of them into its
JSON answer (errors.py).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import anyio
import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .body import THREAD_PARSE_BYTES, parse_json, read_body
from .context import Context
from .inputs import BadRequest, InputError, parse_classify, parse_embeddings
from .metrics import CONTENT_TYPE_LATEST
from .work import count, prepare, reason, run

__all__ = ["embeddings", "classify", "list_models", "ready", "metrics"]

RENDER_IN_THREAD = 64  # vectors past this are turned into JSON off the event loop


async def embeddings(server: Context, request: Request) -> Response:
    server.models.check_ready()
    async with read_body(request, server.limits, server.budget) as body:
        req = parse_embeddings(await parse_json(body), server.limits)
        model = server.models.get(req.model)
        if req.dimensions is not None and req.dimensions != model.dim:
            raise BadRequest(f"dimensions: this model gives {model.dim}-d vectors (no shortening)", param="dimensions")
        inputs = await prepare(req.inputs, req.modality, model, server.limits, server.fetcher, req.errors,
                               big=len(body) > THREAD_PARSE_BYTES)
        towers = inputs.towers()
        rows = await run(request, [(model.batchers[t], inputs.items_for(t)) for t in towers], server.limits)
    results = inputs.results(dict(zip(towers, rows)))
    count(server.metrics, model, inputs.modalities, results)
    if req.errors == "raise":
        _raise_first_failure(results)

    def render() -> bytes:
        data = []
        for i, r in enumerate(results):
            if isinstance(r, np.ndarray):
                vector = (base64.b64encode(r.astype("<f4").tobytes()).decode("ascii")
                          if req.encoding_format == "base64" else r.tolist())
                data.append({"object": "embedding", "index": i, "embedding": vector})
            else:
                data.append({"object": "embedding", "index": i, "embedding": None, "error": reason(r)})
        return json.dumps({"object": "list", "data": data, "model": model.name,
                           "usage": {"prompt_tokens": 0, "total_tokens": 0}}, separators=(",", ":")).encode()

    content = await anyio.to_thread.run_sync(render) if len(results) > RENDER_IN_THREAD else render()
    return Response(content, media_type="application/json")


async def classify(server: Context, request: Request) -> Response:
    """Zero-shot classification of images: the model's own scoring (a softmax over the labels for CLIP, an
    independent sigmoid per label for SigLIP) over vectors the batchers computed."""
    server.models.check_ready()
    async with read_body(request, server.limits, server.budget) as body:
        req = parse_classify(await parse_json(body), server.limits)
        model = server.models.get(req.model)
        if model.clip is None:
            raise BadRequest(f"model {model.name!r} does not hold both towers: it cannot classify", param="model")
        if model.clip.logit_scale is None:  # a published layout without the trained scale (fastclip.clip)
            raise BadRequest(f"model {model.name!r} does not ship its trained logit scale: it cannot classify",
                             param="model")
        inputs = await prepare(req.inputs, "image", model, server.limits, server.fetcher, req.errors,
                               big=len(body) > THREAD_PARSE_BYTES)
        prompts = [req.template.format(label) for label in req.labels]
        image_rows, prompt_rows = await run(request, [(model.batchers["image"], inputs.items_for("image")),
                                                      (model.batchers["text"], prompts)], server.limits)
    for k, row in enumerate(prompt_rows):
        if not isinstance(row, np.ndarray):
            raise BadRequest(f"label {k}: {reason(row)}", param="labels")
    results = inputs.results({"image": image_rows})
    count(server.metrics, model, inputs.modalities, results)
    if req.errors == "raise":
        _raise_first_failure(results)
    ok = [i for i, r in enumerate(results) if isinstance(r, np.ndarray)]
    probs = {}
    if ok:
        scores = await anyio.to_thread.run_sync(model.clip.probabilities, np.stack([results[i] for i in ok]),
                                                np.stack(prompt_rows))
        probs = dict(zip(ok, scores))
    data = []
    for i, r in enumerate(results):
        if i in probs:
            data.append({"object": "classification", "index": i, "probs": probs[i].tolist(),
                         "label": req.labels[int(np.argmax(probs[i]))]})
        else:
            data.append({"object": "classification", "index": i, "probs": None, "label": None, "error": reason(r)})
    return JSONResponse({"object": "list", "data": data, "labels": req.labels, "model": model.name})


def _raise_first_failure(results: list[Any]) -> None:
    bad = next((i for i, r in enumerate(results) if not isinstance(r, np.ndarray)), None)
    if bad is not None:
        raise InputError(bad, reason(results[bad]))


async def list_models(server: Context, request: Request) -> Response:
    server.models.check_ready()
    return JSONResponse({"object": "list", "data": [m.describe() for m in server.models.loaded.values()]})


async def ready(server: Context, request: Request) -> Response:
    models = server.models
    if models.ready.is_set():
        return JSONResponse({"status": "ready", "models": list(models.loaded)})
    status = "failed" if models.load_error else "loading"
    return JSONResponse({"status": status, "error": models.load_error}, status_code=503,
                        headers={"Retry-After": str(server.limits.retry_after)})


async def metrics(server: Context, request: Request) -> Response:
    return Response(server.metrics.render(), media_type=CONTENT_TYPE_LATEST)
