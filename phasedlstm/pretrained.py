"""``save_pretrained(dir)`` / ``Class.from_pretrained(dir)``: a module as ``config.json`` (its class
and constructor arguments) and ``model.safetensors`` (its parameters and buffers).

Nothing on the loading side unpickles: the configuration is JSON, the weights are safetensors,
and a directory written by one class loads only into that class. Every layer and cell class and
the experiment model (:class:`phasedlstm.models.SequenceModel`) have these methods; a run folder
becomes such a directory with ``phasedlstm export RUN --format safetensors``, with a model card
(``README.md``) beside it.
"""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path

import torch

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
FORMAT = "phasedlstm-pretrained"
_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


class PretrainedError(ValueError):
    """A directory that is not a saved model of the asked class (or is damaged)."""


def _plain(value, name):
    """A constructor argument as JSON holds it."""
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, (tuple, list)):
        return [_plain(v, name) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise PretrainedError(f"constructor argument {name}={value!r} cannot be saved in config.json")


def _restored(value):
    if isinstance(value, dict) and set(value) == {"dtype"}:
        if value["dtype"] not in _DTYPES:
            raise PretrainedError(f"unknown dtype {value['dtype']!r} in config.json")
        return _DTYPES[value["dtype"]]
    if isinstance(value, list):
        return [_restored(v) for v in value]
    return value


class Pretrained:
    """Records the arguments a module was built with, and saves and loads it by them."""

    #: constructor arguments that are not part of a saved model (where the tensors live)
    _NOT_SAVED = ("device",)

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        sig = inspect.signature(init)

        @functools.wraps(init)
        def recording(self, *args, **kwargs):
            if "_init_args" not in self.__dict__:  # the outermost constructor's arguments
                bound = sig.bind(self, *args, **kwargs)
                bound.apply_defaults()
                found = {}
                for name, p in sig.parameters.items():
                    if name == "self":
                        continue
                    if p.kind is p.VAR_KEYWORD:
                        found.update(bound.arguments.get(name, {}))
                    elif p.kind is not p.VAR_POSITIONAL:
                        found[name] = bound.arguments[name]
                object.__setattr__(self, "_init_args", found)
            init(self, *args, **kwargs)

        cls.__init__ = recording

    def pretrained_config(self) -> dict:
        """The configuration ``save_pretrained`` writes: the class and its constructor arguments."""
        from phasedlstm import __version__

        args = {k: _plain(v, k) for k, v in self._init_args.items() if k not in self._NOT_SAVED}
        return {"format": FORMAT, "class": type(self).__name__, "phasedlstm_version": __version__, "args": args}

    def save_pretrained(self, directory, card: str | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (and ``README.md`` if ``card`` is given) into
        ``directory``; returns it."""
        from safetensors.torch import save_file

        from phasedlstm._files import atomic_path

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = self.pretrained_config()
        # safetensors refuses tensors that share memory: every entry its own contiguous copy
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in self.state_dict().items()}
        with atomic_path(directory / WEIGHTS) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt", "class": config["class"]})
        with atomic_path(directory / CONFIG) as tmp:
            tmp.write_text(json.dumps(config, indent=2) + "\n")
        if card is not None:
            with atomic_path(directory / "README.md") as tmp:
                tmp.write_text(card)
        return directory

    @classmethod
    def from_pretrained(cls, directory, device=None):
        """The module saved in ``directory`` by ``save_pretrained`` (of this class), on ``device``."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        path = directory / CONFIG
        try:
            config = json.loads(path.read_text())
        except FileNotFoundError:
            raise PretrainedError(f"{directory}: no {CONFIG}; save a model there with save_pretrained (or "
                                  f"`phasedlstm export RUN --format safetensors`)") from None
        except (OSError, ValueError) as e:
            raise PretrainedError(f"{path}: not readable JSON ({e})") from None
        if not isinstance(config, dict) or config.get("format") != FORMAT or not isinstance(config.get("args"), dict):
            raise PretrainedError(f"{path}: not a phasedlstm saved model")
        if config.get("class") != cls.__name__:
            raise PretrainedError(f"{directory} holds a {config.get('class')}, not a {cls.__name__}: load it with "
                                  f"{config.get('class')}.from_pretrained")
        args = {k: _restored(v) for k, v in config["args"].items()}
        try:
            model = cls(**args)
        except (TypeError, ValueError) as e:
            raise PretrainedError(f"{path}: its arguments do not build a {cls.__name__}: {e}") from None
        try:
            state = load_file(str(directory / WEIGHTS))
        except FileNotFoundError:
            raise PretrainedError(f"{directory}: no {WEIGHTS} beside {CONFIG}") from None
        except (SafetensorError, OSError) as e:
            raise PretrainedError(f"{directory / WEIGHTS}: not a readable safetensors file ({e})") from None
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise PretrainedError(f"{directory / WEIGHTS}: its tensors do not fit the {cls.__name__} that "
                                  f"{CONFIG} describes: {' '.join(x.strip() for x in first[:3])}") from None
        return model if device is None else model.to(device)
