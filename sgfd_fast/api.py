"""Use a trained model from Python: load a run directory, recommend, export.

>>> from sgfd_fast.api import load_run
>>> tm = load_run("runs/BM3-office-20250101-120000")
>>> tm.recommend(["A2TM9WEZ2CIXH2"], k=10)      # the dataset's original user and item ids
>>> tm.export("export/")                        # embeddings and distilled features as .npy
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, InputError

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
        ids = dataset.user_ids
        self._user_index = None if ids is None else \
            {_key(v): i for i, v in enumerate(np.asarray(ids).tolist())}
        self._item_ids = None if dataset.item_ids is None else \
            np.asarray(dataset.item_ids).tolist()
        # items a user already has: training interactions and the validation ones carved from them
        known = np.concatenate([dataset.train, dataset.valid])
        order = np.lexsort((known[:, 1], known[:, 0]))
        self._known_items = known[order, 1]
        self._known_ptr = np.zeros(dataset.n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(known[:, 0], minlength=dataset.n_users), out=self._known_ptr[1:])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _internal_users(self, user_ids) -> np.ndarray:
        out = []
        for u in user_ids:
            if self._user_index is not None:
                i = self._user_index.get(_key(u))
                if i is None:
                    raise InputError(f"unknown user id {u!r} (not among the dataset's "
                                     f"{self.dataset.n_users} users)")
            else:
                if isinstance(u, bool) or not isinstance(u, (int, np.integer)) or \
                        not 0 <= int(u) < self.dataset.n_users:
                    raise InputError(f"user id {u!r} is not an int in [0, "
                                     f"{self.dataset.n_users}) (this dataset has no original "
                                     f"ids)")
                i = int(u)
            out.append(i)
        return np.asarray(out, dtype=np.int64)

    @torch.no_grad()
    def scores(self, users: np.ndarray) -> torch.Tensor:
        """(len(users), n_items) scores of internal user indices."""
        emb = self.model.ranking_embeddings()
        idx = torch.as_tensor(users, dtype=torch.long, device=self.device)
        if emb is not None:
            u, i = emb
            return u[idx] @ i.T
        return self.model.score_users(idx)

    def recommend(self, user_ids, k: int = 10) -> list[list]:
        """The top ``k`` items for each user, best first, never an item the user interacted with
        in training (or validation).

        Args:
            user_ids: the dataset's original user ids (``Dataset.user_ids``; internal indices when
                the dataset has none).
            k: items per user.
        Returns:
            one list per user of original item ids (fewer than ``k`` when fewer items remain).
        """
        if isinstance(user_ids, (str, bytes)) or np.ndim(user_ids) == 0:
            raise InputError("recommend() takes a list of user ids")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive int, got {k!r}")
        users = self._internal_users(user_ids)
        out = []
        batch = int(self.config.get("eval_batch_size", 4096))
        for start in range(0, users.size, batch):
            chunk = users[start:start + batch]
            s = self.scores(chunk).float().cpu()
            for row, u in enumerate(chunk):
                s[row, self._known_items[self._known_ptr[u]:self._known_ptr[u + 1]]] = -torch.inf
            # stable sort: ties go to the lower item id, as in evaluation
            order = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :k]
            for row in range(chunk.size):
                top = order[row][torch.isfinite(s[row, order[row]])].tolist()
                out.append([self._item_ids[i] for i in top] if self._item_ids is not None
                           else top)
        return out

    @torch.no_grad()
    def export(self, out_dir) -> dict[str, Path]:
        """Write ``user_embeddings.npy`` and ``item_embeddings.npy`` (rows = internal ids; the
        score is their dot product), ``student_<modality>.npy`` (the distilled student features,
        with SGFD), and ``user_ids.npy``/``item_ids.npy`` (row → original id) when known.

        Returns:
            ``{name: path}`` of the files written.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        arrays = {}
        emb = self.model.ranking_embeddings()
        if emb is not None:
            arrays["user_embeddings"], arrays["item_embeddings"] = emb
        student = getattr(self.model, "student_features", None)
        for m, f in (student() if student else {}).items():
            arrays[f"student_{m}"] = f
        written = {}
        for name, t in arrays.items():
            written[name] = out / f"{name}.npy"
            np.save(written[name], t.detach().float().cpu().numpy())
        for name in ("user_ids", "item_ids"):
            ids = getattr(self.dataset, name)
            if ids is not None:
                written[name] = out / f"{name}.npy"
                np.save(written[name], np.asarray(ids))
        return written


def _key(v):
    # original ids may come back from NumPy as str or int; compare as text
    return str(v.item() if isinstance(v, np.generic) else v)


def load_run(run_dir, device: str = "cpu", dataset=None) -> TrainedModel:
    """Load the best checkpoint of a finished run directory (``results.json`` present).

    The dataset is loaded again as the run loaded it (a built-in name, or the directory path
    stored in the run); a run trained on a Dataset passed in memory needs it as ``dataset``.
    """
    from .models import build_model
    from .training import load_checkpoint, load_data, resolve_device

    run_dir = Path(run_dir)
    rpath = run_dir / "results.json"
    if not rpath.exists():
        hint = (f"; the run has not finished: python -m sgfd_fast.train --resume {run_dir}"
                if (run_dir / "run.json").exists() else "")
        raise ConfigError(f"{run_dir} holds no results.json{hint}")
    results = json.loads(rpath.read_text(encoding="utf-8"))
    ckpt = load_checkpoint(run_dir / results["checkpoint"])
    config = ckpt["config"]
    if dataset is None:
        dataset = load_data(results["data"], config)
    torch.manual_seed(config["seed"])
    model = build_model(ckpt["model_name"], dataset, config)
    model.load_state_dict(ckpt["model"])
    model.to(resolve_device(device))
    return TrainedModel(model, dataset, config, results)
