from phasedlstm.cli import entry

entry()
