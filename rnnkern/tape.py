"""The tape: what a layer's ``forward`` keeps for its ``backward``.

One type and one check for every layer (the recurrent layers, the training
layers, ``Sequential``).  A tape is opaque to users; it belongs to the layer
that recorded it and, for layers with parameters, to the parameter values of
that moment.
"""

from __future__ import annotations

from .validation import describe

__all__ = ["Tape", "check_tape"]


class Tape:
    """What ``forward`` keeps for ``backward``.

    Attributes
    ----------
    owner : object
        The layer whose ``forward`` recorded it.
    saved : object
        Whatever that layer's ``backward`` needs.
    version : int or None
        The owner's parameter version (``ParameterLayer._version``) at
        recording time; None for layers without parameters.
    context : dict
        Facts about the call the owner wants back (shapes, the backend, ...).
    """

    __slots__ = ("owner", "saved", "version", "context")

    def __init__(self, owner, saved, version=None, **context):
        self.owner, self.saved, self.version, self.context = owner, saved, version, context

    def __repr__(self):
        return f"<rnnkern.Tape of {type(self.owner).__name__}>"


def check_tape(tape, owner):
    """Refuse anything but a tape that ``owner``'s own ``forward`` returned.

    Raises
    ------
    TypeError
        If ``tape`` is not a :class:`Tape`.
    ValueError
        If another layer recorded it, or the owner's parameters were replaced
        (``load_state_dict``, ``to``) since.
    """
    if not isinstance(tape, Tape):
        raise TypeError(f"tape: expected the Tape returned by this layer's forward, "
                        f"got {describe(tape)}")
    if tape.owner is not owner:
        raise ValueError("tape: it was recorded by another layer; pass the tape from "
                         "this layer's forward")
    if tape.version is not None and tape.version != owner._version:
        raise ValueError("tape: the parameters changed (load_state_dict or to) since it was "
                         "recorded; run forward again")
