"""A word-level language model's training step with torch.nn.LSTM and with phasedlstm.LSTM.

The model of pytorch/examples' word_language_model (embedding -> 2-layer LSTM with dropout ->
linear decoder, truncated backpropagation through time with the hidden state carried and detached,
gradient clipping 0.25, plain SGD), on random token ids over a vocabulary of 10,000 (the step's
cost does not depend on the text). Both models have the same weights; their steps are timed
interleaved in one process, the median of --repeats; "small" is emsize = nhid = 200 with dropout
0.2, "medium" 650 with 0.5; batch 20, bptt 35.

    python scripts/bench_word_lm.py [--repeats 21] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from phasedlstm import LSTM


class WordLM(nn.Module):
    def __init__(self, rnn_cls, ntoken, size, nlayers, dropout):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, size)
        self.rnn = rnn_cls(size, size, nlayers, dropout=dropout)
        self.decoder = nn.Linear(size, ntoken)

    def forward(self, tokens, hidden):
        out, hidden = self.rnn(self.drop(self.encoder(tokens)), hidden)
        return self.decoder(self.drop(out)), hidden


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ntoken, B, bptt, nlayers = 10000, 20, 35, 2
    for name, size, dropout in (("small", 200, 0.2), ("medium", 650, 0.5)):
        torch.manual_seed(0)
        ours = WordLM(LSTM, ntoken, size, nlayers, dropout)
        theirs = WordLM(nn.LSTM, ntoken, size, nlayers, dropout)
        theirs.load_state_dict(ours.state_dict())
        data = torch.randint(0, ntoken, (bptt + 1, B))
        models = {"torch.nn.LSTM": theirs, "phasedlstm.LSTM": ours}
        hidden = {k: (torch.zeros(nlayers, B, size), torch.zeros(nlayers, B, size)) for k in models}
        crit = nn.CrossEntropyLoss()

        def step(key):
            m = models[key]
            h = tuple(t.detach() for t in hidden[key])
            m.zero_grad()
            out, hidden[key] = m(data[:-1], h)
            crit(out.view(-1, ntoken), data[1:].reshape(-1)).backward()
            nn.utils.clip_grad_norm_(m.parameters(), 0.25)
            for q in m.parameters():
                q.data.add_(q.grad, alpha=-20.0)

        times = {k: [] for k in models}
        for i in range(args.repeats + 3):
            for k in models:  # interleaved
                t0 = time.perf_counter()
                step(k)
                if i >= 3:  # (warm-up: the first steps also measure the autotuned path)
                    times[k].append(1000 * (time.perf_counter() - t0))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{name} (emsize = nhid = {size}): torch.nn.LSTM {med['torch.nn.LSTM']:.1f} ms, phasedlstm.LSTM "
              f"{med['phasedlstm.LSTM']:.1f} ms per training step = "
              f"{med['phasedlstm.LSTM'] / med['torch.nn.LSTM']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
