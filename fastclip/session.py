"""onnxruntime sessions: which precision to load, the model bytes held open, threads, the graph checks.

Which device to ask for is fastclip.providers' job; this module opens the session, checks which provider
it really got, and says so in one log line.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FastClipError, ModelError, first_line
from .hashing import sha256
from .hints import export_hint
from .manifest import TextSpec, TowerFile, TowerSpec
from .providers import CPU, CUDA, default_providers, log_once, ort  # onnxruntime, checked

log = logging.getLogger("fastclip")

class HeldFile:
    """A model file kept open from the moment it is checked, so later sessions read the same bytes.

    The descriptor follows the file it opened: if the path is later replaced (rename over it, as
    atomic writers and hub downloads do), the held file still has the original bytes; if the file is
    rewritten in place, its size or modification time changes and `unchanged()` says so.
    """

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "rb")  # noqa: SIM115 - lives as long as the tower
        st = os.fstat(self.file.fileno())
        self.identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def unchanged(self) -> bool:
        st = os.fstat(self.file.fileno())
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == self.identity

    def path_still_names_it(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == self.identity

    def read(self) -> bytes:
        self.file.seek(0)
        return self.file.read()

    def sha256(self) -> str:
        """Of the held descriptor's bytes, not of whatever the path names now."""
        return sha256(self.file)

    def close(self) -> None:
        self.file.close()


@dataclass
class OnnxSession:
    session: ort.InferenceSession
    precision: str
    device: str  # "cuda" or "cpu": what the session really runs on
    path: Path
    # What `reopen` needs to open the same bytes again (set by open_tower).
    folder: Path | None = None
    tower: TowerSpec | None = None
    name: str = ""
    verify: bool = False
    held: list[HeldFile] = field(default_factory=list, repr=False)

    def reopen(self, *, threads: int | None = 1, providers: list | None = None, allow_spinning: bool = True) -> OnnxSession:
        """Another session of exactly the model bytes this one loaded (and verified), or ModelError.

        One object must run one model. If the file was replaced on disk since (renamed over), the new
        session is built from the bytes still held open; if it was rewritten in place, or an external
        data file changed, there is no way back to the old bytes and this raises instead of silently
        mixing two models' vectors (cosine 0.07-0.20 between them, measured). With verify=True the
        bytes are hashed again. The returned tower holds its own files; close() releases them.
        """
        where = f"{self.folder} ({self.name} tower)"
        if self.tower is None or not self.held:
            raise ModelError(f"{where}: this session was not opened by open_tower; cannot reopen it")
        main, extras = self.held[0], self.held[1:]
        for held in self.held:
            if not held.unchanged():
                raise ModelError(
                    f"{where}: {held.path} was modified in place since the model was loaded; this object "
                    "cannot open another session of the model it runs. Create a new one to load the new file"
                )
        if all(h.path_still_names_it() for h in self.held):
            source: str | bytes = str(main.path)
        elif extras:
            raise ModelError(
                f"{where}: {main.path} or its external data was replaced on disk since the model was loaded; "
                "create a new object to load the new files"
            )
        else:
            source = main.read()  # the held descriptor still reads the replaced file's original bytes
        if providers is None:
            providers = ([CUDA, CPU] if self.device == "cuda" else [CPU])
        session, device = _open_held(source, self.tower.files[self.precision], self.folder, self.held, where=where,
                                     providers=providers, threads=threads, allow_spinning=allow_spinning,
                                     verify=self.verify)
        held = [HeldFile(h.path) if h.path_still_names_it() else h for h in self.held]
        # A replaced file stays shared with this tower (same bytes); reopening by path gives fresh handles.
        return OnnxSession(session=session, precision=self.precision, device=device, path=self.path,
                           folder=self.folder, tower=self.tower, name=self.name, verify=self.verify, held=held)

    def close(self) -> None:
        """Release the model files held open for `reopen`."""
        for held in self.held:
            held.close()


def pick_precision(tower: TowerSpec, device: str, requested: str | None, where: str,
                   folder: Path | None = None) -> str:
    """fp16 on GPU when present, fp32 otherwise; int8 only when asked for by name. `folder`: the tower's
    model folder, whose export command a missing precision's error gives."""
    if requested is not None:
        if requested not in tower.files:
            fix = "" if folder is None else f"; add it by exporting again: {export_hint(folder, [*tower.files, requested])}"
            raise ModelError(
                f"{where}: precision {requested!r} not in this model folder "
                f"(available: {', '.join(sorted(tower.files))}){fix}"
            )
        return requested
    if device == "cuda" and "fp16" in tower.files:
        return "fp16"
    if "fp32" in tower.files:
        return "fp32"
    raise ModelError(
        f"{where}: no fp32 model to run on {device.upper()}; pass precision= one of {sorted(tower.files)}"
    )


def _check_file(folder: Path, rel: str, expected_bytes: int | None, where: str) -> Path:
    path = folder / rel
    if not path.is_file():
        raise ModelError(f"{where}: model file missing: {path}")
    if expected_bytes is not None and path.stat().st_size != expected_bytes:
        raise ModelError(
            f"{where}: {path} is {path.stat().st_size} bytes, the manifest says {expected_bytes}; "
            "the file is truncated or corrupt - download or export it again"
        )
    return path


def _verify(entry: TowerFile, folder: Path, held: list[HeldFile], where: str) -> None:
    """sha256 of the bytes held open (those the session reads) against the manifest."""
    expected = {folder / entry.path: entry.sha256, **{folder / rel: h for rel, h in entry.external_data_sha256.items()}}
    for file in held:
        want = expected.get(file.path)
        if want and file.sha256() != want:
            raise ModelError(f"{where}: {file.path} does not match the sha256 in the manifest; export or download it again")


def _session(source: str | bytes, entry: TowerFile, providers: list, threads: int | None, allow_spinning: bool,
             where: str, path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
    if not allow_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Quiet onnxruntime's own warnings (e.g. about providers); we log the outcome ourselves.
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(
            source,
            sess_options=options,
            providers=providers,
            # The export stage lists graph transformers known to break this file (e.g. on fp16 graphs).
            disabled_optimizers=list(entry.disabled_optimizers) or None,
        )
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types (Fail, InvalidProtobuf, ...)
        first = first_line(exc)
        raise ModelError(f"{where}: onnxruntime could not load {path}: {first}") from None


def _open_held(source: str | bytes, entry: TowerFile, folder: Path, held: list[HeldFile], *, where: str,
               providers: list, threads: int | None, allow_spinning: bool, verify: bool) -> tuple[ort.InferenceSession, str]:
    """The one way a session is opened from files held open (open_tower and reopen): verify the held bytes,
    open `source` (their path, or the bytes a replaced file still holds), check that what was verified is
    what onnxruntime read. (session, "cuda" or "cpu": the provider it really got)."""
    if verify:
        _verify(entry, folder, held, where)
    session = _session(source, entry, providers, threads, allow_spinning, where, held[0].path)
    if isinstance(source, str) and not all(h.unchanged() and h.path_still_names_it() for h in held):
        raise ModelError(f"{where}: {held[0].path} changed on disk while a session was being opened; load it again")
    got = session.get_providers()
    return session, "cuda" if got and got[0] == CUDA else "cpu"


def open_tower(
    folder: Path,
    tower: TowerSpec,
    *,
    name: str,
    providers: list | None = None,
    threads: int | None = None,
    precision: str | None = None,
    verify: bool = False,
    allow_spinning: bool = True,
    announce: bool = True,
) -> OnnxSession:
    """Check the tower's files, then open an onnxruntime session on the best device that works.

    allow_spinning=False stops onnxruntime's idle intra-op threads from spin-waiting between
    operators, leaving the cores to other threads of the process (image decoding). announce=False
    skips the one log line (for a second session of a tower already announced). The model files stay
    open in the returned tower, so `OnnxSession.reopen` can open more sessions of the same bytes.
    """
    where = f"{folder} ({name} tower)"
    if providers is None:
        providers, why = default_providers()
    else:
        why = "as requested"
    wants_cuda = any((p[0] if isinstance(p, tuple) else p) == CUDA for p in providers)
    chosen = pick_precision(tower, "cuda" if wants_cuda else "cpu", precision, where, folder)
    entry = tower.files[chosen]
    path = _check_file(folder, entry.path, entry.bytes, where)
    extras = [_check_file(folder, extra, None, where) for extra in entry.external_data]
    held = [HeldFile(p) for p in [path, *extras]]
    try:
        session, device = _open_held(str(path), entry, folder, held, where=where, providers=providers,
                                     threads=threads, allow_spinning=allow_spinning, verify=verify)
    except BaseException:
        for h in held:
            h.close()
        raise
    if wants_cuda and device == "cpu":
        why = "CUDA was asked for but onnxruntime fell back; check the CUDA and cuDNN 9 libraries"
        if chosen == "fp16" and precision is None and "fp32" in tower.files:
            # The fp16 tower was picked for a GPU we did not get; fp32 is the right CPU variant.
            for h in held:
                h.close()
            fallback = open_tower(folder, tower, name=name, providers=[CPU], threads=threads, precision="fp32",
                                  verify=verify, allow_spinning=allow_spinning, announce=False)
            if announce:  # the line says why it runs on CPU, not "as requested"
                log_once(f"fastclip: {name} tower on CPU ({why}), fp32")
            return fallback
    if announce:
        log_once(f"fastclip: {name} tower on {device.upper()} ({why}), {chosen}")
    return OnnxSession(session=session, precision=chosen, device=device, path=path, folder=folder, tower=tower,
                       name=name, verify=verify, held=held)


class LazySession:
    """One tower's session as a model object holds it: opened once, on first use or at once, checked
    against the manifest (check_graph), and closed once; after close() it refuses to open again.

    cuda_required: a session that onnxruntime runs on CPU instead is a ModelError (fastembed's cuda=True).
    open_options: open_tower's keywords (name, providers, threads, precision, verify, allow_spinning).
    """

    def __init__(self, folder: Path, spec: TowerSpec, *, embed_dim: int, cuda_required: bool, owner: str,
                 **open_options: Any):
        self.folder = folder
        self.spec = spec
        self.embed_dim = embed_dim
        self.cuda_required = cuda_required
        self.owner = owner  # how errors name the object, e.g. "TextEmbedding('models/b32')"
        self.open_options = open_options
        self.loaded: OnnxSession | None = None
        self.closed = False
        self._lock = threading.Lock()

    def get(self) -> OnnxSession:
        loaded = self.loaded
        return loaded if loaded is not None else self._open()

    def _open(self) -> OnnxSession:
        with self._lock:
            self.check_open()
            if self.loaded is None:
                where = f"{self.folder} ({self.open_options['name']} tower)"
                loaded = open_tower(self.folder, self.spec, **self.open_options)
                try:
                    check_graph(loaded, self.spec, self.embed_dim, where)
                    if self.cuda_required and loaded.device != "cuda":
                        raise ModelError(f"{where}: cuda=True, but onnxruntime runs it on CPU here (see the log "
                                         "line above for why); pass cuda=False or cuda='auto'")
                except BaseException:
                    loaded.close()
                    raise
                self.loaded = loaded
            return self.loaded

    def check_open(self) -> None:
        if self.closed:
            raise FastClipError(f"{self.owner} is closed")

    def close(self) -> None:
        """Release the session and the model files it holds open; later get() raises FastClipError."""
        with self._lock:
            self.closed = True
            loaded, self.loaded = self.loaded, None
        if loaded is not None:
            loaded.close()


def check_graph(loaded: OnnxSession, spec: TowerSpec, embed_dim: int, where: str) -> None:
    """Names and dims the manifest promises must be what the graph has: fail at load, before any work.

    For a text tower this includes one probe run at the full context length with the start, pad and end
    ids: a context_length longer than the graph's positional table, or a special token id beyond its
    token table, is otherwise a raw onnxruntime failure at the first long text (or a wrong vector where
    the gather does not check). The probe costs one run of one sequence (~10 ms on ViT-B/32 text).
    """
    inputs = {i.name: i.shape for i in loaded.session.get_inputs()}
    outputs = {o.name: o.shape for o in loaded.session.get_outputs()}
    if spec.input_name not in inputs:
        raise ModelError(f"{where}: graph has no input {spec.input_name!r} (inputs: {list(inputs)})")
    if spec.output_name not in outputs:
        raise ModelError(f"{where}: graph has no output {spec.output_name!r} (outputs: {list(outputs)})")
    dim = outputs[spec.output_name][-1]
    if isinstance(dim, int) and dim != embed_dim:
        raise ModelError(f"{where}: graph output has dim {dim}, the manifest says embed_dim {embed_dim}")
    size = getattr(spec, "image_size", None)
    shape = inputs[spec.input_name]
    if size is not None and len(shape) == 4 and isinstance(shape[-1], int) and shape[-1] != size:
        raise ModelError(f"{where}: graph takes {shape[-1]}px images, the manifest says {size}")
    if isinstance(spec, TextSpec):
        _probe_text(loaded, spec, inputs, where)


def _probe_text(loaded: OnnxSession, spec: TextSpec, inputs: dict, where: str) -> None:
    n = spec.context_length
    if spec.attention_mask_input and spec.attention_mask_input not in inputs:
        raise ModelError(f"{where}: graph has no input {spec.attention_mask_input!r} (inputs: {list(inputs)})")
    seq = inputs[spec.input_name][-1]
    if isinstance(seq, int) and seq != n:
        raise ModelError(f"{where}: graph takes sequences of exactly {seq} tokens, the manifest's context_length is {n}")
    ids = np.array([[spec.bos_token_id] + [spec.pad_token_id] * (n - 2) + [spec.eos_token_id]], dtype=spec.ids_dtype)
    ids = np.repeat(ids, spec.batch or 1, axis=0)  # a graph traced with a fixed batch takes exactly that many
    feeds = {spec.input_name: ids}
    if spec.attention_mask_input:
        feeds[spec.attention_mask_input] = np.ones_like(ids)
    try:
        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # the failure is ours to report, in one line
        out = loaded.session.run([spec.output_name], feeds, quiet)[0]
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
        first = first_line(exc)
        raise ModelError(
            f"{where}: the text graph fails on one sequence of context_length={n} tokens (ids "
            f"{spec.bos_token_id}/{spec.pad_token_id}/{spec.eos_token_id}): the manifest's context_length "
            f"or token ids do not fit this graph ({first[:300]})"
        ) from None
    if not np.isfinite(np.asarray(out, dtype=np.float32)).all():
        raise ModelError(f"{where}: the text graph gives non-finite values on a probe sequence; the model is corrupt")
