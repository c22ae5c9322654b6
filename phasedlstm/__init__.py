"""phasedlstm: the LSTM family written from its equations, with torch.nn.LSTM's API.

- :mod:`phasedlstm.cells`: the equations, one time step each (``LSTMCell``,
  ``PeepholeLSTMCell``, ``PhasedLSTMCell``, ``LayerNormLSTMCell``, ``time_gate``).
- :mod:`phasedlstm.layers`: the loop over time (``LSTM``, ``PeepholeLSTM``,
  ``PhasedLSTM``, ``LayerNormLSTM``), drop-ins for ``torch.nn.LSTM``.
- :mod:`phasedlstm.stream`: ``Stream``, a layer fed one event at a time.
"""

from phasedlstm.cells import LayerNormLSTMCell, LSTMCell, PeepholeLSTMCell, PhasedLSTMCell, phase, time_gate
from phasedlstm.layers import LSTM, LayerNormLSTM, PeepholeLSTM, PhasedLSTM, RecurrentLayer
from phasedlstm.stream import Stream

__version__ = "0.1.0"

__all__ = [
    "LSTM",
    "PeepholeLSTM",
    "PhasedLSTM",
    "LayerNormLSTM",
    "RecurrentLayer",
    "Stream",
    "LSTMCell",
    "PeepholeLSTMCell",
    "PhasedLSTMCell",
    "LayerNormLSTMCell",
    "time_gate",
    "phase",
]
