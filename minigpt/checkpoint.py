"""Checkpoints: save a training run, resume it exactly where it stopped, survive a crash at any instant.

A checkpoint holds everything needed to go on training as if nothing had happened:

    model.safetensors      the parameters (float32 or float64) under the model's own dotted keys ("blocks.0.attn.wq")
    optimizer.safetensors  every per-parameter array of the optimizer's state_dict (AdamW's exp_avg, exp_avg_sq),
                           stored flat as "<entry>/<param key>" ("exp_avg/blocks.0.attn.wq")
    state.json             the rest, as JSON:
                             "config"    the ModelConfig's fields
                             "dtype"     the model's dtype ("float32")
                             "optimizer" the optimizer's scalar state (its step count, lr, ...), null without one;
                                         "optimizer_arrays" names the entries stored in optimizer.safetensors
                             "state"     the caller's own: the training step, RNG states, the data position, ...
                             "files"     the size and SHA-256 of every other file, so a damaged file is caught
    tokenizer.json, ...    the tokenizer's own files, when one is given (tokenizer.save(folder))

A run folder holds its checkpoints and names the current one:

    run_dir/
      checkpoint.json            {"latest": "step-000200", "step": 200}
      checkpoints/
        step-000100/             every folder complete, as above
        step-000200/

Why a crash cannot leave a broken checkpoint. Writing a file is not one event: the bytes reach the
operating system's cache first and the disk later, and a crash in between leaves a file cut short. A
rename, on the other hand, is atomic: afterwards the name points at the new thing, before it at the old,
never at half of one. So save() never lets a name point at something unfinished:

  1. write the new checkpoint into a folder with a temporary name (checkpoints/.tmp-step-000200-1a2b3c4d/),
     then fsync every file and the folder: the bytes are on the disk, not only in the cache;
  2. rename the folder to step-000200 and fsync checkpoints/ (so the rename is on the disk too);
  3. write checkpoint.json.tmp, fsync it, os.replace it onto checkpoint.json, fsync run_dir: the switch;
  4. only then delete older checkpoints (the newest `keep` stay) and whatever an earlier crash left behind.

A crash before step 3's os.replace leaves checkpoint.json naming the previous checkpoint, complete;
after it, the new one. What a crash leaves (a .tmp- folder, a step folder never named) is removed by the next save.
A step saved twice in a row (a run restored at step 200 and saved at once) cannot rename onto the folder
that checkpoint.json names: the new one is step-000200.1 until the switch, then the old step-000200 goes.

Reading trusts no file: a missing, truncated or damaged file, a state.json that is not JSON or lacks a
field, a config that ModelConfig refuses, tensors missing or of the wrong shape or dtype: each is one
ValueError that names the file and says what is wrong (the library's error chained as __cause__).

The caller's state must be plain JSON (dicts with str keys, lists, str, int, float, bool, None), so that
load() returns exactly what save() was given: a NumPy int, a tuple (JSON would give back a list) or an
int dict key (JSON would give back a str) is refused at save time, naming its key. JSON writes integers
of any size exactly, so a NumPy Generator's state (`rng.bit_generator.state`, 128-bit integers) comes
back whole and the generator continues with the same numbers.

    checkpoint.save(run_dir, model, optimizer, state={"step": step, "rng": rng.bit_generator.state})
    if checkpoint.latest(run_dir):
        ck = checkpoint.restore(run_dir, model, optimizer)   # in place; ck.state is the dict saved above

One process saves into a run folder at a time.
"""
import dataclasses
import hashlib
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as safetensors_load
from safetensors.numpy import save_file

from minigpt import tokenizers
from minigpt.backend import resolve_dtype, to_device, to_numpy
from minigpt.config import ModelConfig, check_tensor_set, param_shapes
from minigpt.files import read_json_object
from minigpt.model import Model

POINTER = "checkpoint.json"            # in run_dir: names the current checkpoint
CHECKPOINTS = "checkpoints"            # in run_dir: one folder per saved step
MODEL_FILE, OPTIMIZER_FILE, STATE_FILE = "model.safetensors", "optimizer.safetensors", "state.json"
TMP_PREFIX = ".tmp-"                   # a folder being written, or being deleted
STEP_FOLDER = re.compile(r"step-(\d+)(\.\d+)?")     # step-000200, or step-000200.1 (saved again)
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# state.json's fields and the JSON types they must have
STATE_FIELDS = {"config": (dict,), "dtype": (str,), "optimizer": (dict, type(None)), "optimizer_arrays": (list,),
                "tokenizer": (bool,), "state": (dict,), "files": (dict,)}
JSON_TYPES = {dict: "an object", str: "a string", list: "an array", bool: "true or false", type(None): "null"}


@dataclass(frozen=True)
class Checkpoint:
    """One loaded checkpoint. params: {key: array} in model order; optimizer_state: the optimizer's
    state_dict (its arrays loaded back), or None when it was saved without one; state: the caller's dict."""
    path: str
    config: ModelConfig
    dtype: np.dtype
    params: dict = field(repr=False)
    optimizer_state: dict | None = field(repr=False)
    state: dict
    tokenizer: object = None

    @property
    def step(self):
        return self.state["step"]

    def model(self, device=None):
        """A new Model holding these parameters."""
        return Model(self.config, device=device, dtype=self.dtype, params=self.params)


# ---------------------------------------------------------------------------------------------
# checking what is to be saved
# ---------------------------------------------------------------------------------------------

def _step_of(state):
    """state["step"]: an int >= 0, which names the checkpoint folder."""
    if not isinstance(state, dict) or "step" not in state:
        found = f"a dict with keys {list(state)}" if isinstance(state, dict) else repr(state)[:60]
        raise ValueError(f"state: expected a dict with the training step as state['step'] (an int >= 0; "
                         f"it names the checkpoint folder), got {found}")
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"state['step']={step!r} ({type(step).__name__}): expected an int >= 0")
    return step


def _check_json(value, where):
    """Refuse what JSON would not give back as it was, naming where it is: state['rng']['state']."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} has the key {key!r} ({type(key).__name__}): JSON keys are strings, "
                                 f"it would come back as {json.dumps(str(key))}; use str keys")
            _check_json(item, f"{where}[{key!r}]")
    else:
        kind = f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")
        hint = {"tuple": "JSON would give it back as a list; store a list"}.get(
            kind, "store int, float, str, bool, None, lists and dicts (.item() or .tolist() for NumPy values)")
        raise ValueError(f"{where} is a {kind} ({str(value)[:60]}), which JSON cannot hold exactly: {hint}")


def _is_array(value):
    return isinstance(value, np.ndarray) or hasattr(value, "__cuda_array_interface__")  # NumPy or CuPy


def _is_array_dict(value):
    """True for an optimizer state entry of per-parameter arrays ({param key: array}, not empty)."""
    return isinstance(value, dict) and bool(value) and all(_is_array(v) for v in value.values())


def _float_array(array, where):
    """A contiguous NumPy copy of a float32 / float64 array; any other dtype is an error naming it."""
    array = to_numpy(array)
    if array.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{where} is {array.dtype}: checkpoints store float32 or float64 arrays")
    return np.ascontiguousarray(array)


def _split_optimizer_state(state_dict):
    """An optimizer's state_dict -> (its JSON scalars, {entry: {param key: NumPy array}})."""
    scalars, arrays = {}, {}
    for name, value in state_dict.items():
        if not _is_array_dict(value):
            scalars[name] = value
            continue
        if not isinstance(name, str) or "/" in name or not all(isinstance(key, str) for key in value):
            raise ValueError(f"optimizer state entry {name!r}: expected a str without '/' holding str keys "
                             f"(stored as '<entry>/<key>')")
        arrays[name] = {key: _float_array(a, f"optimizer state[{name!r}][{key!r}]") for key, a in value.items()}
    _check_json(scalars, "optimizer state")
    return scalars, arrays


# ---------------------------------------------------------------------------------------------
# writing: every file and folder fsynced before a name points at it
# ---------------------------------------------------------------------------------------------

def _fsync_dir(path):
    """Put a folder's entries (new names, renames) on the disk. POSIX only: Windows cannot open a folder."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _seal(folder):
    """fsync every file under folder (and its sub-folders); returns {relative path: {"bytes", "sha256"}}."""
    records = {}
    for root, _, files in os.walk(folder):
        for name in sorted(files):
            path = os.path.join(root, name)
            digest, size = hashlib.sha256(), 0
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
                    size += len(block)
                os.fsync(f.fileno())
            relative = os.path.relpath(path, folder).replace(os.sep, "/")
            records[relative] = {"bytes": size, "sha256": digest.hexdigest()}
        _fsync_dir(root)
    return records


def _write_json(path, value):
    """Write value as JSON and fsync it."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _remove(path):
    """Delete a file or a folder tree, if it is there."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def _abandon(path):
    """Remove what a failed save was writing. A crash skips this; the next save's tidy-up removes it then."""
    _remove(path)


def _write_folder(tmp, tensors, meta, tokenizer):
    """The complete checkpoint in the new folder tmp, every file and the folder fsynced; state.json last."""
    os.mkdir(tmp)
    try:
        for name, arrays in tensors.items():
            save_file(arrays, os.path.join(tmp, name))
        if tokenizer is not None:
            tokenizer.save(tmp)
        _write_json(os.path.join(tmp, STATE_FILE), {**meta, "files": _seal(tmp)})
        _fsync_dir(tmp)
    except BaseException:
        _abandon(tmp)
        raise
    return tmp


def _point(run_dir, name, step):
    """checkpoint.json := {"latest": name}, atomically: written aside, fsynced, then os.replace."""
    path = os.path.join(run_dir, POINTER)
    tmp = path + ".tmp"
    try:
        _write_json(tmp, {"latest": name, "step": step})
        os.replace(tmp, path)
    except BaseException:
        _abandon(tmp)
        raise
    _fsync_dir(run_dir)


def _retire(path):
    """Delete a checkpoint folder: renamed to a temporary name first, so a crash halfway through leaves
    no half-deleted folder under a step name (the next save's tidy-up finishes the job)."""
    trash = os.path.join(os.path.dirname(path), f"{TMP_PREFIX}old-{os.path.basename(path)}-{secrets.token_hex(4)}")
    os.rename(path, trash)
    _remove(trash)


def _publish(run_dir, tmp, step):
    """Give the complete folder tmp its final name and point checkpoint.json at it (steps 2 and 3)."""
    checkpoints = os.path.dirname(tmp)
    name, again = f"step-{step:06d}", 0
    while os.path.lexists(os.path.join(checkpoints, name)):   # saved before, maybe the latest: both stay
        again += 1                                            # until the switch, the old one goes after it
        name = f"step-{step:06d}.{again}"
    final = os.path.join(checkpoints, name)
    os.rename(tmp, final)
    _fsync_dir(checkpoints)
    _point(run_dir, name, step)
    return final


def _tidy(run_dir, keep, final):
    """After a save: remove what crashed saves left, an earlier folder of this same step, and all but the
    newest `keep` checkpoints up to this step. Folders of later steps (left by a run that was resumed from
    an earlier checkpoint) stay until this run saves those steps again."""
    checkpoints, latest_name = os.path.split(final)
    step = int(STEP_FOLDER.fullmatch(latest_name).group(1))
    _remove(os.path.join(run_dir, POINTER + ".tmp"))
    older = []                                           # (step, folder name) of the steps before this one
    for name in os.listdir(checkpoints):
        match = STEP_FOLDER.fullmatch(name)
        if name.startswith(TMP_PREFIX):                  # checkpoint.json names none of these
            _remove(os.path.join(checkpoints, name))
        elif match and name != latest_name and int(match.group(1)) == step:
            _retire(os.path.join(checkpoints, name))     # replaced by the one just saved
        elif match and int(match.group(1)) < step:
            older.append((int(match.group(1)), name))
    if keep is not None:
        for _, name in sorted(older)[:max(0, len(older) - (keep - 1))]:
            _retire(os.path.join(checkpoints, name))


def save(run_dir, model, optimizer=None, state=None, tokenizer=None, keep=2):
    """Save a checkpoint into run_dir/checkpoints/step-<state['step']>/ and make it the latest; returns its path.

    model: a Model; optimizer: anything with state_dict() (JSON scalars and {param key: array} dicts);
    state: the caller's JSON dict, with state["step"] an int >= 0; tokenizer: anything with save(folder);
    keep: how many checkpoints to keep (the newest, up to this step), None for all.
    Everything is checked before anything is written; a crash at any instant leaves the previous
    checkpoint the latest (see the module's docstring). Old checkpoints are deleted only once the new
    one is the latest: an error there is raised, with the new checkpoint already in place."""
    step = _step_of(state)
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep={keep!r}: expected an int >= 1 (how many checkpoints to keep), or None for all")
    _check_json(state, "state")
    tensors = {MODEL_FILE: {k: _float_array(v, f"model.params[{k!r}]") for k, v in model.params.items()}}
    scalars, arrays = None, {}
    if optimizer is not None:
        scalars, arrays = _split_optimizer_state(optimizer.state_dict())
        tensors[OPTIMIZER_FILE] = {f"{entry}/{key}": a for entry, d in arrays.items() for key, a in d.items()}
    meta = {"step": step, "dtype": np.dtype(model.dtype).name, "config": dataclasses.asdict(model.config),
            "optimizer": scalars, "optimizer_arrays": list(arrays), "tokenizer": tokenizer is not None,
            "state": state}
    run_dir = os.fspath(run_dir)
    os.makedirs(os.path.join(run_dir, CHECKPOINTS), exist_ok=True)
    tmp = os.path.join(run_dir, CHECKPOINTS, f"{TMP_PREFIX}step-{step:06d}-{secrets.token_hex(4)}")
    _write_folder(tmp, tensors, meta, tokenizer)
    try:
        final = _publish(run_dir, tmp, step)
    except BaseException:
        _abandon(tmp)                                    # gone already if the rename was done
        raise
    _tidy(run_dir, keep, final)
    return final


# ---------------------------------------------------------------------------------------------
# reading: every problem a ValueError naming the file
# ---------------------------------------------------------------------------------------------

def latest(run_dir):
    """The path of run_dir's current checkpoint folder, or None when nothing was saved there yet."""
    pointer = os.path.join(os.fspath(run_dir), POINTER)
    if not os.path.isfile(pointer):
        return None
    name = read_json_object(pointer).get("latest")
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"{pointer}: \"latest\" should name a folder in {CHECKPOINTS}/, found {name!r}")
    folder = os.path.join(os.fspath(run_dir), CHECKPOINTS, name)
    if not os.path.isdir(folder):
        raise ValueError(f"{pointer}: names the checkpoint {name!r}, but {folder} does not exist (deleted or moved?)")
    return folder


def _checkpoint_folder(path):
    """A checkpoint folder from a run folder (its latest checkpoint) or a checkpoint folder itself."""
    path = os.fspath(path)
    folder = latest(path)
    if folder is not None:
        return folder
    if os.path.isfile(os.path.join(path, STATE_FILE)):
        return path
    if not os.path.isdir(path):
        raise ValueError(f"{path}: no such folder (expected a run folder or a checkpoint folder)")
    raise ValueError(f"{path}: no checkpoint yet: there is no {POINTER} (save() writes it), and it is not a "
                     f"checkpoint folder either (no {STATE_FILE})")


def _read_meta(folder):
    """state.json, checked; its "config" as a ModelConfig and its "dtype" as a NumPy dtype."""
    path = os.path.join(folder, STATE_FILE)
    meta = read_json_object(path)
    for name, kind in STATE_FIELDS.items():
        if name not in meta:
            raise ValueError(f"{path}: has no \"{name}\" (not a state.json written by minigpt.checkpoint.save?)")
        if not isinstance(meta[name], kind):
            raise ValueError(f"{path}: \"{name}\" should be {' or '.join(JSON_TYPES[k] for k in kind)}, "
                             f"found {json.dumps(meta[name])[:60]}")
    if not all(isinstance(name, str) for name in meta["optimizer_arrays"]):
        raise ValueError(f"{path}: \"optimizer_arrays\" should list entry names (str): {meta['optimizer_arrays']}")
    try:
        config = ModelConfig(**meta["config"])
    except (TypeError, ValueError) as err:  # TypeError: an unknown field
        raise ValueError(f"{path}: \"config\" is not a valid ModelConfig: {err}") from err
    try:
        dtype = np.dtype(resolve_dtype(meta["dtype"]))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: \"dtype\": {err}") from err
    return {**meta, "config": config, "dtype": dtype}


def _read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as err:
        raise ValueError(f"{path}: no such file (the checkpoint is incomplete)") from err
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror or err})") from err


def _verify(path, data, record):
    """The file's bytes are the ones saved: the size and SHA-256 that state.json records."""
    if not isinstance(record, dict):
        raise ValueError(f"{path}: {STATE_FILE} records no size and SHA-256 for this file")
    if len(data) != record.get("bytes"):
        raise ValueError(f"{path}: has {len(data)} bytes, but {record.get('bytes')} were saved: "
                         f"the file was truncated or overwritten")
    digest = hashlib.sha256(data).hexdigest()
    if digest != record.get("sha256"):
        raise ValueError(f"{path}: its bytes differ from those saved (SHA-256 {digest[:16]}..., saved "
                         f"{str(record.get('sha256'))[:16]}...): the file is damaged")


def _read_tensors(folder, name, meta, dtypes):
    """{key: NumPy array} of one .safetensors file of the checkpoint, each of one of these dtypes."""
    path = os.path.join(folder, name)
    data = _read_bytes(path)
    try:
        tensors = safetensors_load(data)
    except (SafetensorError, KeyError) as err:  # KeyError: a dtype NumPy lacks ("BF16")
        raise ValueError(f"{path}: not a readable .safetensors file: corrupt, truncated, or of a dtype NumPy "
                         f"lacks ({type(err).__name__}: {err})") from err
    _verify(path, data, meta["files"].get(name))
    wrong = [f"{key} is {t.dtype}" for key, t in tensors.items() if t.dtype not in dtypes]
    if wrong:
        raise ValueError(f"{path}: {', '.join(wrong)}; expected {' or '.join(d.name for d in dtypes)}")
    return tensors


def _read_optimizer(folder, meta, shapes):
    """The optimizer's state_dict: state.json's scalars and optimizer.safetensors' {param key: array} entries."""
    if meta["optimizer"] is None:
        return None
    path = os.path.join(folder, OPTIMIZER_FILE)
    entries = {name: {} for name in meta["optimizer_arrays"]}
    for flat_key, array in _read_tensors(folder, OPTIMIZER_FILE, meta, FLOAT_DTYPES).items():
        entry, _, key = flat_key.partition("/")
        if entry not in entries:
            raise ValueError(f"{path}: the tensor {flat_key!r} belongs to no entry that {STATE_FILE} lists "
                             f"(\"optimizer_arrays\": {list(entries)})")
        entries[entry][key] = array
    for entry, arrays in entries.items():
        if not arrays:
            raise ValueError(f"{path}: no tensors for the optimizer entry {entry!r} that {STATE_FILE} lists")
        check_tensor_set(f"{path}: the {entry!r} arrays do not fit the model's parameters",
                         {key: shapes[key] for key in arrays if key in shapes}, arrays)
    return {**meta["optimizer"], **entries}


def _read_tokenizer(folder, meta):
    """The saved tokenizer, its files checked against state.json first; None when none was saved."""
    if not meta["tokenizer"]:
        return None
    for name, record in meta["files"].items():
        if name not in (MODEL_FILE, OPTIMIZER_FILE):
            path = os.path.join(folder, *name.split("/"))
            _verify(path, _read_bytes(path), record)
    return tokenizers.load(folder)


def _map_arrays(optimizer_state, move):
    """The optimizer state with move() applied to every array of its {param key: array} entries."""
    return {name: {k: move(a) for k, a in value.items()} if _is_array_dict(value) else value
            for name, value in optimizer_state.items()}


def load(path, device=None):
    """The Checkpoint in path: a run folder (its latest checkpoint) or one checkpoint folder.
    Arrays are NumPy, as saved; device ("cpu", "cuda") moves params and optimizer arrays there."""
    folder = _checkpoint_folder(path)
    meta = _read_meta(folder)
    config, dtype = meta["config"], meta["dtype"]
    shapes = param_shapes(config)
    params = _read_tensors(folder, MODEL_FILE, meta, (dtype,))
    check_tensor_set(f"{os.path.join(folder, MODEL_FILE)}: the tensors do not fit the config in {STATE_FILE}",
                     shapes, params)
    params = {key: params[key] for key in shapes}                    # model order
    optimizer_state = _read_optimizer(folder, meta, shapes)
    if device is not None:
        params = {key: to_device(value, device) for key, value in params.items()}
        if optimizer_state is not None:
            optimizer_state = _map_arrays(optimizer_state, lambda a: to_device(a, device))
    return Checkpoint(path=folder, config=config, dtype=dtype, params=params, optimizer_state=optimizer_state,
                      state=meta["state"], tokenizer=_read_tokenizer(folder, meta))


# ---------------------------------------------------------------------------------------------
# restoring into a live model and optimizer
# ---------------------------------------------------------------------------------------------

def _config_differences(saved, current):
    """'name: checkpoint has X, model has Y' for every compared ModelConfig field that differs."""
    pairs = [(f.name, getattr(saved, f.name), getattr(current, f.name)) for f in dataclasses.fields(ModelConfig)
             if f.compare]
    return [f"{name}: checkpoint has {a!r}, model has {b!r}" for name, a, b in pairs if a != b]


def restore(run_dir, model, optimizer=None):
    """Load run_dir's latest checkpoint INTO model (in place: model.params[k][...] = value, cast to the
    model's dtype, on its device) and optimizer (load_state_dict); returns the Checkpoint (its .state is
    the caller's dict). Everything is checked before anything changes: a bad checkpoint changes nothing.
    run_dir may also be a Checkpoint already loaded (load()), so nothing is read twice."""
    ck = run_dir if isinstance(run_dir, Checkpoint) else load(run_dir)
    differences = _config_differences(ck.config, model.config)
    if differences:
        raise ValueError(f"{ck.path}: the checkpoint's config differs from the model's:\n  " + "\n  ".join(differences))
    check_tensor_set(f"{ck.path}: the checkpoint's tensors do not fit the model",
                     {key: value.shape for key, value in model.params.items()}, ck.params)
    if optimizer is not None:
        if ck.optimizer_state is None:
            raise ValueError(f"{ck.path}: holds no optimizer state (it was saved without an optimizer)")
        optimizer.load_state_dict(_map_arrays(ck.optimizer_state, model.xp.asarray))  # it checks its own state
    for key, value in ck.params.items():
        model.params[key][...] = model.xp.asarray(value, dtype=model.dtype)
    return ck
