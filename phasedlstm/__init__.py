"""phasedlstm: the LSTM family written from its equations, with torch.nn.LSTM's API.

- :mod:`phasedlstm.cells`: the equations, one time step each (``LSTMCell``,
  ``PeepholeLSTMCell``, ``PhasedLSTMCell``, ``LayerNormLSTMCell``, ``time_gate``).
- :mod:`phasedlstm.layers`: the loop over time (``LSTM``, ``PeepholeLSTM``,
  ``PhasedLSTM``, ``LayerNormLSTM``, ``BatchNormLSTM``), drop-ins for ``torch.nn.LSTM``.
- :mod:`phasedlstm.stream`: ``Stream``, a layer fed one event at a time.
"""

import torch

from phasedlstm import fast
from phasedlstm._checks import InputError, InputTypeError
from phasedlstm.cells import LayerNormLSTMCell, LSTMCell, PeepholeLSTMCell, PhasedLSTMCell, phase, time_gate
from phasedlstm.layers import LSTM, BatchNormLSTM, LayerNormLSTM, PeepholeLSTM, PhasedLSTM, RecurrentLayer
from phasedlstm.stream import Stream

__version__ = "0.1.0"

# A whole model saved with torch.save loads with torch.load's default weights_only=True, as a model
# with torch.nn.LSTM does: the unpickler may build these classes.
torch.serialization.add_safe_globals([LSTM, PeepholeLSTM, PhasedLSTM, LayerNormLSTM, BatchNormLSTM, LSTMCell,
                                      PeepholeLSTMCell, PhasedLSTMCell, LayerNormLSTMCell])

# The kernels' operators, where this version is built for this machine already (see fast.load_built):
# torch.export.load of a program that calls them then works after `import phasedlstm`.
fast.load_built()

__all__ = [
    "LSTM",
    "PeepholeLSTM",
    "PhasedLSTM",
    "LayerNormLSTM",
    "BatchNormLSTM",
    "RecurrentLayer",
    "Stream",
    "LSTMCell",
    "PeepholeLSTMCell",
    "PhasedLSTMCell",
    "LayerNormLSTMCell",
    "time_gate",
    "phase",
    "InputError",
    "InputTypeError",
]
