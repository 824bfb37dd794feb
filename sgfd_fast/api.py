"""Use a trained model from Python: load a run directory, recommend, export.

>>> from sgfd_fast.api import load_run
>>> tm = load_run("runs/BM3-office-20250101-120000")
>>> tm.recommend(["A2TM9WEZ2CIXH2"], k=10)      # the dataset's original user and item ids
>>> tm.export("export/")                        # embeddings and distilled features as .npy
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ._files import npy_writer, write_all
from .errors import ConfigError, InputError
from .graph import CSR

__all__ = ["load_run", "TrainedModel"]


class TrainedModel:
    """A trained model with its dataset and configuration.

    Attributes:
        model: the ``Recommender`` (in eval mode).
        dataset: the Dataset it was trained on.
        config: the resolved config of the selected grid point.
        results: the run's ``results.json``.
    """

    def __init__(self, model, dataset, config: dict, results: dict):
        self.model = model.eval()
        self.dataset = dataset
        self.config = config
        self.results = results
        self._user_index, self._user_shared = _index(dataset.user_ids)
        item_index, _ = _index(dataset.item_ids)
        self._item_names = list(range(dataset.n_items))
        for name, i in item_index.items():
            self._item_names[i] = name
        # items a user already has: training interactions and the validation ones carved from them
        known = np.concatenate([dataset.train, dataset.valid])
        self._known = CSR.from_coo(known[:, 0], known[:, 1], None, dataset.n_users,
                                   dataset.n_items, duplicates="drop")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _internal_users(self, user_ids) -> np.ndarray:
        n = self.dataset.n_users
        out = []
        for u in user_ids:
            if isinstance(u, (int, np.integer)) and not isinstance(u, (bool, np.bool_)):
                if not 0 <= int(u) < n:
                    raise InputError(f"user {u!r}: an int is an internal user index, and this "
                                     f"dataset has users 0 to {n - 1}")
                out.append(int(u))
            elif isinstance(u, str):
                i = self._user_index.get(u)
                if i is None:
                    shared = self._user_shared.get(u)
                    if shared:
                        raise InputError(f"user id {u!r} is the original id of {len(shared)} "
                                         f"users (internal {shared[:5]}); pass the internal "
                                         f"index (an int) instead")
                    raise InputError(f"unknown user id {u!r}: no user of the dataset's {n} has "
                                     "that original id (users without one are addressed by "
                                     f"their internal index, an int in [0, {n}))")
                out.append(i)
            else:
                raise InputError(f"user {u!r}: expected an original id (str) or an internal "
                                 f"index (int), got {type(u).__name__}")
        return np.asarray(out, dtype=np.int64)

    def _user_indices(self, users) -> np.ndarray:
        """``users`` as (U,) int64 internal indices, each checked against ``[0, n_users)``."""
        try:
            arr = users.cpu().numpy() if isinstance(users, torch.Tensor) else np.asarray(users)
        except ValueError as e:  # a ragged list
            raise InputError(f"scores: users must be a 1-D sequence of internal user indices "
                             f"({e})") from None
        if arr.ndim != 1:
            raise InputError(f"scores: users must be a 1-D sequence of internal user indices, "
                             f"got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):  # bool is no integer here
            first = arr.reshape(-1)[0]  # an object array (ints beyond 64 bits) holds Python objects
            first = first.item() if isinstance(first, np.generic) else first
            raise InputError(f"scores: users must be internal user indices (ints), got dtype "
                             f"{arr.dtype} (first {first!r}); 1.5, True or an int beyond int64 is "
                             f"no user")
        n = self.dataset.n_users
        bad = np.flatnonzero((arr < 0) | (arr >= n))
        if bad.size:  # a negative index would wrap to the last users
            raise InputError(f"scores: user index {arr[bad[0]].item()} (position {bad[0]}) is "
                             f"outside the dataset's users 0 to {n - 1}")
        return arr.astype(np.int64)

    @torch.no_grad()
    def scores(self, users) -> torch.Tensor:
        """The full score matrix of some users.

        Args:
            users: (U,) internal user indices (a list, NumPy array or tensor of ints).
        Returns:
            (U, n_items) float32 scores on the model's device (higher is better).
        Raises:
            InputError: an index outside ``[0, n_users)`` (no negative indexing), a value that is
                not an int within int64 (``1.5``, ``True``, ``2**64``, an object array), or not a
                1-D sequence.
        """
        emb = self.model.ranking_embeddings()
        idx = torch.as_tensor(self._user_indices(users), dtype=torch.long, device=self.device)
        if emb is not None:
            u, i = emb
            return u[idx] @ i.T
        return self.model.score_users(idx)

    def recommend(self, user_ids, k: int = 10, *, batch_size: int | None = None) -> list[list]:
        """The top ``k`` items for each user, best first, never an item the user interacted with
        in training (or validation).

        Users and items are named alike: by the dataset's original id (a str) when it has one
        that no other user (item) shares, otherwise by the internal index (an int, the row of
        :meth:`export`'s arrays). An int always addresses a user by internal index.

        Ranking follows evaluation (:func:`sgfd_fast.evaluation.top_k_items`): ties to the lower
        item id; an item scoring NaN or -inf is never returned. Memory is bounded by
        ``batch_size``: dot-product models rank with ``ops.masked_topk`` and MAML with
        ``ops.attentive_distance_topk``, forming no score matrix; any other model that scores
        with ``score_users`` forms one (batch_size, n_items) block at a time.

        Args:
            user_ids: original ids (str) or internal indices (int).
            k: items per user, 1 to ``n_items``.
            batch_size: users ranked at once (default: the config's ``eval_batch_size``).
        Returns:
            one list per user of item names (fewer than ``k`` when fewer items remain).
        Raises:
            InputError: an unknown, empty or shared original id, an index out of range, k < 1
                or k above the number of items.
        """
        from .evaluation import top_k_items

        if isinstance(user_ids, (str, bytes)) or np.ndim(user_ids) == 0:
            raise InputError("recommend() takes a list of user ids")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive int, got {k!r}")
        if k > self.dataset.n_items:
            raise InputError(f"k={k} is more than the dataset's {self.dataset.n_items} items; "
                             f"give k <= {self.dataset.n_items} (k={self.dataset.n_items} "
                             f"returns every item a user does not have yet)")
        if batch_size is None:
            batch_size = int(self.config.get("eval_batch_size", 4096))
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or \
                batch_size < 1:
            raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
        users = self._internal_users(user_ids)
        dev = self.device
        indices = top_k_items(self.model, torch.from_numpy(users).to(dev), self._known.to(dev),
                              int(k), int(batch_size))[1]
        return [[self._item_names[i] for i in row if i >= 0] for row in indices.cpu().tolist()]

    @torch.no_grad()
    def export(self, out_dir, *, overwrite: bool = False) -> dict[str, Path]:
        """Write ``user_embeddings.npy`` and ``item_embeddings.npy`` (rows = internal ids; the
        score is their dot product), ``student_<modality>.npy`` (the distilled student features,
        with SGFD), and ``user_ids.npy``/``item_ids.npy`` (row → original id) when known.

        All or nothing: every file is written to a temporary file first and renamed over its
        target only once all are written, so a failed write (a full disk) leaves ``out_dir`` as
        it was, with no partial ``.npy``.

        Args:
            out_dir: a new or empty directory (created with its parents; ``~`` is expanded).
            overwrite: also write into a non-empty directory, replacing same-named files.
        Returns:
            ``{name: path}`` of the files written.
        Raises:
            InputError: ``out_dir`` is no path (a str or ``os.PathLike``) or is ``""``, a file,
                cannot be created, is not empty (without ``overwrite``), or a file cannot be
                written (the message names it and why); ``overwrite`` is not a bool.
        """
        _require_path(out_dir, "export", "out_dir")
        _require_bool(overwrite, "export", "overwrite")
        if str(out_dir) == "":  # Path("") is the current directory: never meant
            raise InputError("export: the directory is ''; give a path")
        out = Path(out_dir).expanduser()
        if out.exists() and not out.is_dir():
            raise InputError(f"export: {out} is a file; give a new or empty directory")
        if out.is_dir() and not overwrite and any(out.iterdir()):
            names = sorted(p.name for p in out.iterdir())
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise InputError(f"export: {out} is not empty ({shown}); give a new or empty "
                             f"directory, or pass overwrite=True to replace same-named files")
        arrays = {}
        emb = self.model.ranking_embeddings()
        if emb is not None:
            arrays["user_embeddings"], arrays["item_embeddings"] = emb
        student = getattr(self.model, "student_features", None)
        for m, f in (student() if student else {}).items():
            arrays[f"student_{m}"] = f
        arrays = {name: t.detach().float().cpu().numpy() for name, t in arrays.items()}
        for name in ("user_ids", "item_ids"):
            ids = getattr(self.dataset, name)
            if ids is not None:
                arrays[name] = np.asarray(ids).astype(str)  # loads without allow_pickle
        files = {f"{name}.npy": npy_writer(a) for name, a in arrays.items()}
        written = write_all(out, files, error=InputError, what="export", done="exported")
        return {name: written[f"{name}.npy"] for name in arrays}


def _index(ids) -> tuple[dict, dict]:
    """``({original id: internal index}, {shared id: [indices]})`` over the ids that name exactly
    one row (non-empty, unshared), and the ids that several rows share. No ids: two empty dicts."""
    if ids is None:
        return {}, {}
    rows: dict[str, list[int]] = {}
    for i, v in enumerate(np.asarray(ids).tolist()):
        if str(v) != "":  # the loaders write "" for a row without an original id
            rows.setdefault(str(v), []).append(i)
    return ({v: r[0] for v, r in rows.items() if len(r) == 1},
            {v: r for v, r in rows.items() if len(r) > 1})


def _require_path(value, func: str, name: str) -> None:
    if not isinstance(value, (str, os.PathLike)):
        raise InputError(f"{func}: {name} must be a path (a str or os.PathLike), got "
                         f"{type(value).__name__} {value!r}")


def _require_bool(value, func: str, name: str) -> None:
    if not isinstance(value, bool):  # 'no' would be true
        raise InputError(f"{func}: {name} must be True or False, got {type(value).__name__} "
                         f"{value!r}")


def load_run(run_dir, device: str = "cpu", dataset=None, *,
             allow_data_change: bool = False) -> TrainedModel:
    """Load the best checkpoint of a finished run directory (``results.json`` present).

    The dataset is loaded again as the run loaded it (a built-in name, or the directory path
    stored in the run); a run trained on a Dataset passed in memory needs it as ``dataset``.

    Raises:
        InputError: ``run_dir`` is no path (a str or ``os.PathLike``), ``dataset`` is neither a
            :class:`~sgfd_fast.data.Dataset` nor None, or ``allow_data_change`` is not a bool.
        ConfigError: ``run_dir`` is ``""``, not a directory, or holds no ``results.json``.
        DataError: the data differ from the fingerprint in ``run.json`` (unless
            ``allow_data_change``; data of another shape are refused even then).
        RunDirectoryError: a record is unreadable or not what sgfd_fast wrote, or ``best.pt``
            holds another model, configuration or data shape.
    """
    from .errors import DataError, RunDirectoryError
    from .models import build_model
    from .records import read_results, read_run
    from .data import Dataset, load_data
    from .training import RESUMABLE_KEYS, load_checkpoint, resolve_device
    from .training.rundir import data_fingerprint, data_shape, describe_fingerprint

    _require_path(run_dir, "load_run", "run_dir")
    if dataset is not None and not isinstance(dataset, Dataset):  # a name is not loaded here
        raise InputError(f"load_run: dataset must be a Dataset object (the one a run was trained "
                         f"on in memory) or None (load the data the run records), got "
                         f"{type(dataset).__name__} {dataset!r}")
    _require_bool(allow_data_change, "load_run", "allow_data_change")
    if str(run_dir) == "":  # Path("") is the current directory: never meant
        raise ConfigError("load_run: the run directory is ''; give a path")
    run_dir = Path(run_dir).expanduser()
    rpath = run_dir / "results.json"
    if not run_dir.is_dir():
        what = "is a file" if run_dir.exists() else "no such directory"
        raise ConfigError(f"{run_dir}: {what}; load_run takes the directory a training wrote "
                          f"(its --out or run_dir)")
    if not rpath.exists():
        hint = (f"; the run has not finished: python -m sgfd_fast.train --resume {run_dir}"
                if (run_dir / "run.json").exists() else "")
        raise ConfigError(f"{run_dir} holds no results.json{hint}")
    results = read_results(run_dir)
    recorded = read_run(run_dir)["data_fingerprint"]  # no run.json, no data check: refused
    best = run_dir / results["checkpoint"]
    ckpt = load_checkpoint(best, "best")
    config = ckpt["config"]
    theirs = json.loads(json.dumps(config))  # a resume may change RESUMABLE_KEYS since
    if ckpt["model_name"] != results["model"] or any(
            theirs.get(k) != results["config"].get(k) for k in set(theirs) | set(results["config"])
            if k not in RESUMABLE_KEYS):
        raise RunDirectoryError(f"{best} holds another model or configuration than "
                                f"{run_dir / 'results.json'} reports: it comes from another run; "
                                f"restore this run's best.pt")
    if dataset is None:
        dataset = load_data(results["data"], config)
    fp = data_fingerprint(dataset)
    if recorded["sha256"] != fp["sha256"]:
        shape = data_shape(dataset)
        same_shape = all(recorded.get(k, v) == v for k, v in shape.items())
        if not (allow_data_change and same_shape):
            raise DataError(
                f"the data differ from those {run_dir} was trained on (run.json records "
                f"{describe_fingerprint(recorded)}, the data give {describe_fingerprint(fp)}); "
                f"restore them" + (", or pass allow_data_change=True to use these"
                                   if same_shape else
                                   " (data of another shape cannot serve this model)"))
    torch.manual_seed(config["seed"])
    model = build_model(ckpt["model_name"], dataset, config)
    ours, ckpt["model"] = model.state_dict(), model.complete_state(ckpt["model"])
    if set(ours) != set(ckpt["model"]) or any(
            tuple(v.shape) != tuple(ckpt["model"][k].shape) for k, v in ours.items()):
        raise RunDirectoryError(f"{best} does not fit the model built for these data and its "
                                f"configuration: it comes from another run; restore this run's "
                                f"best.pt")
    model.load_state_dict(ckpt["model"])
    model.to(resolve_device(device))
    return TrainedModel(model, dataset, config, results)
