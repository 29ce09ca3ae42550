"""Parameters of a layer: creation, ``state_dict`` interchange, device moves.

Shared by the recurrent layers and the training layers (``Dense``,
``Embedding``).  Parameters are NumPy arrays (device ``"cpu"``) or CuPy arrays
(device ``"cuda"``), created on the host and moved; arrays of any other
array-API library get a converted copy per namespace (the generic path).
"""

from __future__ import annotations

import weakref

import array_api_compat
import numpy as np

from . import validation as v
from .devices import check_device, require_cupy
from .dispatch import backend_name
from .validation import describe

__all__ = ["ParameterLayer", "TapeParameters", "check_state_dict", "to_device_array"]


class TapeParameters(dict):
    """A layer's NumPy parameters as its tapes keep them: shared, not copied.

    A tape must backpropagate through the values its forward ran with, even if
    an optimizer updates the parameters in place before ``backward``.  Copying
    them at every forward cost more than a single step's kernels (1.5 MB for an
    ``LSTMCell(128, 256)``, ~55 us, and T copies for T steps of a cell kept for
    backpropagation through time), so they are copied on write instead:

    - while any tape holds this object, the layer's own arrays are read-only,
      and the kernels read writable views of them taken before the lock
      (Numba compiles a read-only array as a type of its own);
    - ``ParameterLayer.parameters()``, the door through which optimizers reach
      the arrays, first calls :meth:`detach`: the tapes get copies, the arrays
      their writability back.  When the last tape is dropped, the arrays get
      it back too (:meth:`watch`).

    So an update through ``parameters()`` leaves every tape's gradients as they
    were, and a write through an array fetched before the forward fails with
    NumPy's read-only ValueError instead of changing them.  Not caught: a
    writable alias made before the forward (a slice, ``torch.from_numpy``)
    written between the forward and its ``backward``.

    The mapping is name -> view; ``directions`` caches the per-direction dicts
    built from it (``RegistryCellMixin._direction_parameters``), which the
    backends' tapes hold, so that :meth:`detach` reaches every dict a tape
    holds.  Arrays of other libraries are copied at the forward instead (CuPy
    arrays have no read-only flag).
    """

    __slots__ = ("sources", "locked", "directions", "__weakref__")

    def __init__(self, params):
        # The views first: a view taken after the lock would be read-only too.  An
        # array read-only already (another layer's lock: tied weights) is copied: that
        # lock ends when the other layer's tapes are dropped, not with these.
        super().__init__({name: p.view() if p.flags.writeable else p.copy()
                          for name, p in params.items()})
        self.sources = tuple(params.items())
        self.locked = [p for p in params.values() if p.flags.writeable]
        for p in self.locked:
            p.setflags(write=False)
        self.directions = {}

    def watch(self):
        """A weak reference to this object that unlocks the arrays once no tape holds it.

        Its owner keeps it (tapes keep their layer alive, so it outlives them);
        dropped, it does nothing (after :meth:`detach`).
        """
        locked = self.locked
        return weakref.ref(self, lambda _: _make_writable(locked))

    def holds(self, params):
        """Whether these are views of exactly the arrays ``params`` has now."""
        return (len(params) == len(self.sources)
                and all(params.get(name) is p for name, p in self.sources))

    def detach(self):
        """Copy every array the tapes hold, in every dict, and unlock the layer's arrays."""
        copies = {}
        for values in (self, *self.directions.values()):
            for name, a in values.items():
                if id(a) not in copies:
                    copies[id(a)] = a.copy()
                values[name] = copies[id(a)]
        self.sources = ()
        _make_writable(self.locked)
        self.locked.clear()             # what watch()'s callback would unlock: nothing now


def _make_writable(arrays):
    for a in arrays:
        a.setflags(write=True)


class ParameterLayer:
    """Mixin holding a layer's parameters (``self._params``: name -> array).

    ``_version`` counts every change made through this API (``load_state_dict``,
    ``to``), so a tape can tell that the parameters it saw were replaced.
    ``_shared`` is a weak reference to the :class:`TapeParameters` that the live
    tapes of NumPy parameters share (None or dead when there is none).
    """

    def _init_parameters(self, params, dtype, device):
        """Take host arrays ``params``, cast to ``dtype``, move to ``device``."""
        self.dtype = v.check_float_dtype("dtype", dtype)
        check_device(device)
        self.device = "cpu"
        self._params = {name: np.asarray(p).astype(self.dtype) for name, p in params.items()}
        self._version = 0
        self._generic_cache = None
        self._shared = None
        self.to(device)

    def parameters(self):
        """The parameter dict itself (name -> array), for optimizers.

        Its arrays may be updated in place: tapes recorded before keep the
        values they ran with (see :class:`TapeParameters`).
        """
        self._detach_tapes()
        return self._params

    def state_dict(self):
        """Parameters by name, as arrays of the layer's device (copies)."""
        return {name: p.copy() for name, p in self._params.items()}

    def load_state_dict(self, state_dict):
        """Load parameters by name.

        Values may be NumPy or CuPy arrays or anything with ``__dlpack__``
        (a torch tensor, say).  Every key must be present and no other; all
        are checked before any is loaded, so a failure leaves the layer as it
        was.  Values are copied and cast to the layer's dtype.
        """
        check_state_dict(self._params, state_dict)
        loaded = {name: to_device_array(state_dict[name], self.device, f"state_dict[{name!r}]")
                  for name in self._params}
        self._detach_tapes()
        self._params = {name: value.astype(self.dtype, copy=True) for name, value in loaded.items()}
        self._version += 1

    def to(self, device):
        """Move the parameters to ``"cpu"`` (NumPy) or ``"cuda"`` (CuPy); returns self."""
        if check_device(device) != self.device:
            self._detach_tapes()
            self._params = {n: to_device_array(p, device, n) for n, p in self._params.items()}
            self.device = device
            self._version += 1
        return self

    def _parameters_for(self, xp, argument="x", *, for_tape=False):
        """The parameters as arrays of namespace ``xp`` (name -> array), or a clear TypeError.

        ``for_tape=True``: values a tape may keep until its ``backward``, which
        no later update through ``parameters()`` changes: the shared
        :class:`TapeParameters` for NumPy, copies for other libraries.
        """
        params = self._parameters_in(xp, argument)
        if self.device != "cpu" or params is not self._params:      # not NumPy's
            if for_tape:
                return {name: xp.asarray(p, copy=True) for name, p in params.items()}
            return params
        shared = self._shared() if self._shared is not None else None
        if shared is not None and shared.holds(params):
            return shared                   # the arrays are locked: the kernels read its views
        if shared is not None:              # entries of the dict were replaced since
            self._detach_tapes()
        if not for_tape:
            return params
        shared = TapeParameters(params)
        self._shared = shared.watch()
        return shared

    def _detach_tapes(self):
        """Before the arrays may change: live tapes get copies, the arrays their writability."""
        shared = self._shared() if self._shared is not None else None
        self._shared = None
        if shared is not None:
            shared.detach()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_shared"] = None             # a weak reference; tapes are not pickled with layers
        return state

    def _parameters_in(self, xp, argument):
        backend = backend_name(xp)
        if backend == "generic":
            if self.device != "cpu":
                raise TypeError(f"{argument}: the layer's parameters are CuPy arrays (device "
                                f"'cuda'); call .to('cpu') to run arrays of other libraries")
            key = (id(xp), self._version)
            if self._generic_cache is None or self._generic_cache[0] != key:
                self._generic_cache = (key, {n: xp.asarray(p) for n, p in self._params.items()})
            return self._generic_cache[1]
        wanted = "cpu" if backend == "numba" else "cuda"
        if wanted != self.device:
            library = "numpy" if backend == "numba" else "cupy"
            raise TypeError(f"{argument}: a {library} array was given but the layer's parameters "
                            f"are on device {self.device!r}; call .to({wanted!r}) first")
        return self._params

    def _device_of(self, xp):
        """The device object of the parameters as arrays of ``xp``."""
        return array_api_compat.device(next(iter(self._parameters_for(xp).values())))


def check_state_dict(current, state_dict):
    """Check that ``state_dict`` has exactly the names and shapes of ``current``.

    Nothing is modified, so a failure leaves the owner untouched.
    """
    if not hasattr(state_dict, "keys"):
        raise TypeError(f"state_dict: expected a mapping of name to array, got {describe(state_dict)}")
    missing = sorted(set(current) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(current))
    if missing or unexpected:
        raise ValueError(f"state_dict: missing keys {missing}, unexpected keys {unexpected}")
    for name, param in current.items():
        value = state_dict[name]
        shape = getattr(value, "shape", None)
        if shape is None:
            raise TypeError(f"state_dict[{name!r}]: expected an array, got {describe(value)}")
        if tuple(shape) != tuple(param.shape):
            raise ValueError(f"state_dict[{name!r}]: expected shape {tuple(param.shape)}, "
                             f"got {describe(value)}")
        kind = str(getattr(value, "dtype", ""))
        if not ("float" in kind or "int" in kind):
            raise TypeError(f"state_dict[{name!r}]: expected a real array, got {describe(value)}")


def to_device_array(value, device, name):
    """A NumPy (device "cpu") or CuPy (device "cuda") array from ``value``."""
    if device == "cpu":
        if isinstance(value, np.ndarray):
            return value
        if array_api_compat.is_cupy_array(value):
            return value.get()
        if hasattr(value, "__dlpack__"):
            try:
                return np.from_dlpack(value)
            except Exception as err:   # e.g. a torch tensor that requires grad
                raise TypeError(f"{name}: could not read it through DLPack ({err}); "
                                f"pass a NumPy array or a detached CPU tensor") from None
        raise TypeError(f"{name}: expected a NumPy or CuPy array or an object with "
                        f"__dlpack__, got {describe(value)}")
    cupy = require_cupy()
    if isinstance(value, np.ndarray) or array_api_compat.is_cupy_array(value):
        return cupy.asarray(value)
    if hasattr(value, "__dlpack__"):
        try:
            return cupy.from_dlpack(value)
        except Exception as err:
            raise TypeError(f"{name}: could not read it through DLPack ({err})") from None
    raise TypeError(f"{name}: expected a NumPy or CuPy array or an object with "
                    f"__dlpack__, got {describe(value)}")
